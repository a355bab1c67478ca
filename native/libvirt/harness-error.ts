/** Apart from the harness so that its network module can throw it without an import cycle. */
export class HarnessError extends Error {
  override readonly name = 'HarnessError';
}
