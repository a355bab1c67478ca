/**
 * A dialer for tests whose connections flip one byte of chosen writes before TLS encrypts them: damage that TLS
 * cannot see, so only DWCP's own checks (payload CRC, chunk sha256) can catch it.
 */
import { Duplex } from 'node:stream';
import { dialTls, type Dialer } from '../connection';

export interface TamperingDialer {
  dial: Dialer;
  /** How many writes were damaged so far. */
  flipped: () => number;
}

/**
 * `pick` sees every write of every connection (with its stream index) and returns the offset of the byte to flip,
 * or undefined to leave that write alone.
 */
export function tamperingDialer(pick: (write: Buffer, streamIndex: number) => number | undefined): TamperingDialer {
  let flipped = 0;
  const dial: Dialer = async (opts) => {
    const inner = await dialTls(opts);
    const outer = new Duplex({
      read() {
        inner.resume();
      },
      write(chunk: Buffer, _enc, done) {
        let data = chunk;
        const at = pick(chunk, opts.streamIndex);
        if (at !== undefined) {
          data = Buffer.from(chunk);
          data[at]! ^= 0x01;
          flipped++;
        }
        inner.write(data, done);
      },
      final(done) {
        inner.end(done);
      },
      destroy(err, done) {
        inner.destroy(err ?? undefined);
        done(err);
      },
    });
    inner.on('data', (d: Buffer) => {
      if (!outer.push(d)) inner.pause();
    });
    inner.on('end', () => outer.push(null));
    inner.on('error', (err) => outer.destroy(err));
    inner.on('close', () => outer.destroy());
    return outer;
  };
  return { dial, flipped: () => flipped };
}
