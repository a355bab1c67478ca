import { readFileSync } from 'node:fs';
import net from 'node:net';

/** Ports below this are left to system services. */
const LOWEST_TEST_PORT = 10_000;

/**
 * The kernel's range for the local ports of outgoing connections. A port from it that was free a moment ago can be
 * taken by any connection made before the server binds it (a stack start makes hundreds), so tests stay below it.
 */
function ephemeralPortsStart(): number {
  try {
    const [low] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
    return Number.isInteger(low) ? low! : 32_768;
  } catch {
    return 32_768;
  }
}

function listenable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/**
 * A port that was free a moment ago and that no outgoing connection can take before a test's server binds it: a
 * random one between LOWEST_TEST_PORT and the ephemeral range, so parallel test files rarely pick the same one.
 */
export async function freePort(): Promise<number> {
  const span = ephemeralPortsStart() - LOWEST_TEST_PORT;
  if (span < 1000) throw new Error(`ip_local_port_range starts at ${ephemeralPortsStart()}: no room for test ports`);
  for (let attempt = 0; attempt < 100; attempt++) {
    const port = LOWEST_TEST_PORT + Math.floor(Math.random() * span);
    if (await listenable(port)) return port;
  }
  throw new Error(`no free port found between ${LOWEST_TEST_PORT} and ${LOWEST_TEST_PORT + span}`);
}
