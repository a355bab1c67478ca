-- Live migration: fenced ownership across hosts, what a host offers a migration (storage pools, addresses),
-- capacity held on a target while a VM moves there, and one row per migration, kept as the training data of the
-- predictors that plan later migrations.

-- Fencing tokens belong to one host's lease and are not comparable across hosts: a move is judged by the writer's
-- live lease, and a racing move by the ownership generation, which grows by one with every ownership write.
ALTER TABLE vms ADD COLUMN owner_generation bigint NOT NULL DEFAULT 0;
ALTER TABLE vms DROP CONSTRAINT vms_state_check;
ALTER TABLE vms ADD CONSTRAINT vms_state_check CHECK (state IN (
  'creating', 'starting', 'running', 'stopping', 'stopped', 'rebooting', 'deleting', 'migrating', 'failed'));

-- Pools other than `local` that the host mounts, name -> path on that host. Where QEMU listens for migration
-- streams (NULL: the host's address), and the URI peers' libvirtds reach this one by for peer-to-peer migration.
ALTER TABLE hosts ADD COLUMN storage_pools jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE hosts ADD COLUMN migration_address text;
ALTER TABLE hosts ADD COLUMN peer_libvirt_uri text;

-- Capacity a workflow holds on a host before its VM is there (a migration's target). Counted with the VMs a host
-- has, so placement and later reservations cannot give it away.
CREATE TABLE capacity_reservations (
  workflow_id text PRIMARY KEY,
  host_id     text NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
  vm_id       uuid NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
  vcpus       integer NOT NULL CHECK (vcpus >= 0),
  memory_mib  bigint NOT NULL CHECK (memory_mib >= 0),
  disk_mib    bigint NOT NULL CHECK (disk_mib >= 0),
  created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX capacity_reservations_host_idx ON capacity_reservations (host_id);

-- One row per migrateVm workflow. No foreign key to vms: the record outlives the VM, as training data.
-- A row holds a migration slot of its source (outgoing) and target (incoming) while its state is 'running': from
-- acquiring the slot to the end of the workflow, commit and clean-up included.
CREATE TABLE migrations (
  id                    text PRIMARY KEY,
  vm_id                 uuid NOT NULL,
  source_host_id        text NOT NULL,
  target_host_id        text,
  state                 text NOT NULL CHECK (state IN (
                          'planning', 'queued', 'running', 'completed', 'failed', 'cancelled', 'refused')),
  policy                jsonb NOT NULL,
  plan                  jsonb,
  progress              jsonb,
  escalations           jsonb NOT NULL DEFAULT '[]'::jsonb,
  result                jsonb,
  error                 text,
  final_host_id         text,
  -- The ownership generation the commit wrote, so a retried commit returns it instead of moving the VM again.
  committed_generation  bigint,
  predicted_total_ms    double precision,
  predicted_downtime_ms double precision,
  measured_total_ms     double precision,
  measured_downtime_ms  double precision,
  bytes_transferred     bigint,
  created_at            timestamptz NOT NULL DEFAULT now(),
  -- When the migration first asked for a slot: the order of the queue.
  queued_at             timestamptz,
  started_at            timestamptz,
  finished_at           timestamptz
);
CREATE INDEX migrations_vm_idx ON migrations (vm_id, created_at DESC);
CREATE INDEX migrations_state_idx ON migrations (state);
