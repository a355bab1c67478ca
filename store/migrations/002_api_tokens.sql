-- Bearer API tokens. Only the SHA-256 of each token's secret is stored, so a copy of this table grants no access;
-- the public id is what finds the row, and the hash is then compared in constant time.
CREATE TABLE api_tokens (
  id          text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{16}$'),
  name        text NOT NULL,
  secret_hash bytea NOT NULL CHECK (octet_length(secret_hash) = 32),
  roles       text[] NOT NULL CHECK (cardinality(roles) > 0 AND roles <@ ARRAY['viewer', 'operator', 'admin']),
  created_by  text NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  expires_at  timestamptz,
  revoked_at  timestamptz
);
-- A revoked token's name may be reused; two live tokens may not share one, or the audit log's actor is ambiguous.
CREATE UNIQUE INDEX api_tokens_live_name_idx ON api_tokens (name) WHERE revoked_at IS NULL;

-- GET /v1/audit filters by actor and by request id.
CREATE INDEX audit_log_actor_idx ON audit_log (actor, id DESC);
CREATE INDEX audit_log_request_id_idx ON audit_log (request_id);
