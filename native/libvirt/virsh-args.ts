/**
 * Checks on what goes into a virsh argument vector, shared by the connection and the migration calls: values are
 * validated so that none can be read as an option or be anything surprising.
 */
import { DOMAIN_NAME_PATTERN } from './domain-xml';
import { LibvirtError, LibvirtErrorCode } from './errors';

// `--domain` keeps a name from being read as an option; validation keeps it from being anything surprising.
export function domainArg(name: string, named = true): string[] {
  if (typeof name !== 'string' || !DOMAIN_NAME_PATTERN.test(name)) {
    throw invalidArgument(`domain name ${JSON.stringify(name)} must match ${DOMAIN_NAME_PATTERN.source}`);
  }
  return named ? ['--domain', name] : [name];
}

export function assertInteger(value: number, min: number, max: number, what: string): void {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw invalidArgument(`${what} must be an integer in [${min}, ${max}], got ${String(value)}`);
  }
}

export function invalidArgument(message: string): LibvirtError {
  return new LibvirtError({ message, code: LibvirtErrorCode.invalidArg, operation: 'validate input' });
}
