-- Host agents, VM lifecycle and inventory sync (ASS): what the agents report, the drift found in it, and a
-- timeline of host and VM events.

ALTER TABLE hosts ADD COLUMN image_root text;
ALTER TABLE hosts ADD COLUMN state_changed_at timestamptz NOT NULL DEFAULT now();

-- The lifecycle workflow that holds the VM; one at a time, so a stop cannot interleave with a delete.
ALTER TABLE vms ADD COLUMN operation_workflow_id text;
ALTER TABLE vms ADD COLUMN last_error text;
ALTER TABLE vms ADD CONSTRAINT vms_state_check CHECK (state IN (
  'creating', 'starting', 'running', 'stopping', 'stopped', 'rebooting', 'deleting', 'failed'));

-- The newest libvirt inventory of each host. (lease_token, seq) only grows: a report from an agent that lost its
-- lease, or one that arrives after a newer one, is refused.
CREATE TABLE inventory_reports (
  host_id      text PRIMARY KEY REFERENCES hosts(id) ON DELETE CASCADE,
  lease_token  bigint NOT NULL,
  seq          bigint NOT NULL,
  observed_at  timestamptz NOT NULL,
  received_at  timestamptz NOT NULL DEFAULT now(),
  domains      jsonb NOT NULL
);

-- No foreign key to vms: an unknown domain's UUID names no VM, and a drift row outlives the VM it was about.
CREATE TABLE drift (
  id                 bigserial PRIMARY KEY,
  host_id            text NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
  vm_id              uuid,
  domain_name        text NOT NULL,
  kind               text NOT NULL CHECK (kind IN ('unknown-vm', 'missing-vm', 'state-mismatch')),
  expected           text,
  actual             text,
  observed_at        timestamptz NOT NULL,
  detected_at        timestamptz NOT NULL DEFAULT now(),
  resolved_at        timestamptz,
  action             text NOT NULL DEFAULT 'alerted' CHECK (action IN ('alerted', 'repairing')),
  repair_workflow_id text
);
CREATE UNIQUE INDEX drift_open_idx ON drift (host_id, domain_name, kind) WHERE resolved_at IS NULL;
CREATE INDEX drift_detected_at_idx ON drift (detected_at DESC);

CREATE TABLE events (
  id              bigserial PRIMARY KEY,
  at              timestamptz NOT NULL DEFAULT now(),
  kind            text NOT NULL,
  host_id         text,
  vm_id           uuid,
  workflow_id     text,
  message         text NOT NULL,
  -- workflow id + step, so a retried activity records its event once.
  idempotency_key text UNIQUE
);
CREATE INDEX events_at_idx ON events (at DESC);
CREATE INDEX events_vm_id_idx ON events (vm_id);
CREATE INDEX events_host_id_idx ON events (host_id);
