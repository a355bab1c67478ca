-- Disk images and their copies on hosts (moved by DWCP), and the link probe samples between hosts that the
-- bandwidth predictor (PBA) will learn from.

-- Where a host agent's DWCP receiver listens, host:port; NULL until an agent with a receiver registers.
ALTER TABLE hosts ADD COLUMN dwcp_endpoint text;

CREATE TABLE images (
  id          text PRIMARY KEY,
  format      text NOT NULL CHECK (format IN ('raw', 'qcow2')),
  size_bytes  bigint NOT NULL CHECK (size_bytes >= 0),
  sha256      text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
  description text NOT NULL DEFAULT '',
  created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per image per host. 'ready' rows were verified against images.sha256 on that host.
CREATE TABLE image_replicas (
  image_id    text NOT NULL REFERENCES images(id) ON DELETE CASCADE,
  host_id     text NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
  path        text NOT NULL,
  state       text NOT NULL CHECK (state IN ('replicating', 'ready', 'failed')),
  workflow_id text,
  error       text,
  updated_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (image_id, host_id)
);

CREATE TABLE link_probes (
  id              bigserial PRIMARY KEY,
  source_host_id  text NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
  target_host_id  text NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
  measured_at     timestamptz NOT NULL DEFAULT now(),
  rtt_ms          double precision NOT NULL CHECK (rtt_ms >= 0),
  bandwidth_mbps  double precision NOT NULL CHECK (bandwidth_mbps >= 0),
  probe_bytes     bigint NOT NULL,
  streams         integer NOT NULL,
  mode            text NOT NULL CHECK (mode IN ('datacenter', 'hybrid', 'internet')),
  workflow_id     text,
  -- workflow id + step, so a retried activity stores its sample once.
  idempotency_key text UNIQUE
);
CREATE INDEX link_probes_pair_idx ON link_probes (source_host_id, target_host_id, measured_at DESC);
