/**
 * The image library: images (content addressed by sha256) and their copies on hosts. A replica is 'ready' only
 * after the host verified its sha256 against the image's.
 */
import type { Pool, PoolClient } from 'pg';
import type { ImageFormat, ImageRecord, ReplicaState } from '../domain/image';

export class ImageStoreError extends Error {
  override readonly name = 'ImageStoreError';
  constructor(
    message: string,
    readonly code: 'image-content-mismatch',
  ) {
    super(message);
  }
}

/**
 * Records an image and its first ready replica. Registering the same content again is a no-op; the same id with
 * other content is refused, because replicas elsewhere hold the old bytes.
 */
export async function registerImage(
  pool: Pool,
  input: {
    id: string;
    format: ImageFormat;
    sizeBytes: number;
    sha256: string;
    description: string;
    hostId: string;
    path: string;
    workflowId: string;
  },
): Promise<ImageRecord> {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    await client.query(
      `INSERT INTO images (id, format, size_bytes, sha256, description) VALUES ($1, $2, $3, $4, $5)
       ON CONFLICT (id) DO NOTHING`,
      [input.id, input.format, input.sizeBytes, input.sha256, input.description],
    );
    const stored = await client.query<{ sha256: string; format: string }>(
      'SELECT sha256, format FROM images WHERE id = $1 FOR UPDATE',
      [input.id],
    );
    const row = stored.rows[0]!;
    if (row.sha256 !== input.sha256 || row.format !== input.format) {
      throw new ImageStoreError(
        `image ${input.id} is already registered with other content (sha256 ${row.sha256}, ${row.format})`,
        'image-content-mismatch',
      );
    }
    await upsertReplica(client, {
      imageId: input.id,
      hostId: input.hostId,
      path: input.path,
      state: 'ready',
      workflowId: input.workflowId,
    });
    await client.query('COMMIT');
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    client.release();
  }
  return (await getImage(pool, input.id))!;
}

export async function upsertReplica(
  client: Pool | PoolClient,
  input: { imageId: string; hostId: string; path: string; state: ReplicaState; workflowId: string; error?: string },
): Promise<void> {
  await client.query(
    `INSERT INTO image_replicas (image_id, host_id, path, state, workflow_id, error) VALUES ($1, $2, $3, $4, $5, $6)
     ON CONFLICT (image_id, host_id) DO UPDATE SET path = EXCLUDED.path, state = EXCLUDED.state,
       workflow_id = EXCLUDED.workflow_id, error = EXCLUDED.error, updated_at = now()`,
    [input.imageId, input.hostId, input.path, input.state, input.workflowId, input.error ?? null],
  );
}

/**
 * Marks how a replication ended, but only while the row still belongs to that workflow: a late retry of an old
 * run must not overwrite a newer replication's outcome.
 */
export async function finishReplica(
  pool: Pool,
  input: { imageId: string; hostId: string; workflowId: string; state: 'ready' | 'failed'; error?: string },
): Promise<boolean> {
  const result = await pool.query(
    `UPDATE image_replicas SET state = $4, error = $5, updated_at = now()
     WHERE image_id = $1 AND host_id = $2 AND workflow_id = $3`,
    [input.imageId, input.hostId, input.workflowId, input.state, input.error ?? null],
  );
  return result.rowCount === 1;
}

interface ImageRow {
  id: string;
  format: ImageFormat;
  size_bytes: string;
  sha256: string;
  description: string;
  created_at: Date;
  replicas: Array<{
    host_id: string;
    path: string;
    state: ReplicaState;
    workflow_id: string | null;
    error: string | null;
    updated_at: string;
  }> | null;
}

const IMAGE_SELECT = `
  SELECT i.id, i.format, i.size_bytes, i.sha256, i.description, i.created_at,
    (SELECT json_agg(json_build_object('host_id', r.host_id, 'path', r.path, 'state', r.state,
        'workflow_id', r.workflow_id, 'error', r.error, 'updated_at', r.updated_at) ORDER BY r.host_id)
     FROM image_replicas r WHERE r.image_id = i.id) AS replicas
  FROM images i`;

function toImage(row: ImageRow): ImageRecord {
  return {
    id: row.id,
    format: row.format,
    sizeBytes: Number(row.size_bytes),
    sha256: row.sha256,
    description: row.description,
    createdAt: row.created_at.toISOString(),
    replicas: (row.replicas ?? []).map((r) => ({
      hostId: r.host_id,
      path: r.path,
      state: r.state,
      ...(r.workflow_id ? { workflowId: r.workflow_id } : {}),
      ...(r.error ? { error: r.error } : {}),
      updatedAt: new Date(r.updated_at).toISOString(),
    })),
  };
}

export async function getImage(client: Pool | PoolClient, imageId: string): Promise<ImageRecord | undefined> {
  const result = await client.query<ImageRow>(`${IMAGE_SELECT} WHERE i.id = $1`, [imageId]);
  const row = result.rows[0];
  return row ? toImage(row) : undefined;
}

export async function listImages(pool: Pool): Promise<ImageRecord[]> {
  const result = await pool.query<ImageRow>(`${IMAGE_SELECT} ORDER BY i.id`);
  return result.rows.map(toImage);
}
