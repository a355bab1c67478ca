-- Inventory, leases with fencing tokens, the audit trail, and the record of each cluster boot.
CREATE TABLE hosts (
  id            text PRIMARY KEY,
  address       text NOT NULL,
  libvirt_uri   text NOT NULL,
  cpus          integer NOT NULL CHECK (cpus > 0),
  memory_mib    bigint NOT NULL CHECK (memory_mib > 0),
  disk_mib      bigint NOT NULL CHECK (disk_mib >= 0),
  labels        jsonb NOT NULL DEFAULT '{}'::jsonb,
  state         text NOT NULL DEFAULT 'up' CHECK (state IN ('up', 'down', 'maintenance')),
  registered_at timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE vms (
  id            uuid PRIMARY KEY,
  name          text NOT NULL UNIQUE,
  host_id       text REFERENCES hosts(id),
  spec          jsonb NOT NULL,
  state         text NOT NULL,
  -- The fencing token of the host lease under which ownership was last written; a stale writer is refused.
  owner_token   bigint,
  version       bigint NOT NULL DEFAULT 0,
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX vms_host_id_idx ON vms (host_id);

-- A lease per resource (a host's liveness, a VM's migration lock). fencing_token only ever grows, so a holder
-- that lost its lease cannot act with its old token.
CREATE TABLE leases (
  resource      text PRIMARY KEY,
  holder        text NOT NULL,
  fencing_token bigint NOT NULL,
  expires_at    timestamptz NOT NULL,
  acquired_at   timestamptz NOT NULL DEFAULT now(),
  renewed_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE audit_log (
  id           bigserial PRIMARY KEY,
  at           timestamptz NOT NULL DEFAULT now(),
  actor        text NOT NULL,
  action       text NOT NULL,
  target       text,
  request_id   text,
  workflow_id  text,
  outcome      text NOT NULL,
  details      jsonb NOT NULL DEFAULT '{}'::jsonb,
  -- Set by activities (workflow id + step) so that a retried step never writes a second row.
  idempotency_key text UNIQUE
);
CREATE INDEX audit_log_at_idx ON audit_log (at DESC);
CREATE INDEX audit_log_workflow_id_idx ON audit_log (workflow_id);

-- One row per initializeCluster run: written 'running' when it starts, then its outcome. /ready reads the newest.
CREATE TABLE cluster_boots (
  workflow_id  text PRIMARY KEY,
  node_id      text NOT NULL,
  status       text NOT NULL CHECK (status IN ('running', 'ready', 'degraded', 'failed')),
  report       jsonb NOT NULL,
  started_at   timestamptz NOT NULL DEFAULT now(),
  completed_at timestamptz
);
CREATE INDEX cluster_boots_started_at_idx ON cluster_boots (started_at DESC);
