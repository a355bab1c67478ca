/**
 * One pino setup for every process. Secrets are redacted by path; Temporal's own log calls (from activities and,
 * through sinks, workflows) are routed here so that their workflowId, runId and activity ids land in the context.
 */
import type { LogLevel, LogMetadata, Logger as TemporalLogger } from '@temporalio/common';
import pino, { type Logger } from 'pino';
import type { NovacronConfig } from '../config/schema';

export interface CreateLoggerInput {
  service: string;
  config: Pick<NovacronConfig, 'system' | 'security'>;
  /** Defaults to stdout; tests pass a stream to inspect what was written. */
  destination?: pino.DestinationStream;
}

export function createLogger(input: CreateLoggerInput): Logger {
  return pino(
    {
      level: input.config.system.logLevel,
      base: { service: input.service, host: input.config.system.nodeId },
      redact: { paths: input.config.security.redactPaths, censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    input.destination,
  );
}

const TEMPORAL_TO_PINO: Record<LogLevel, 'trace' | 'debug' | 'info' | 'warn' | 'error'> = {
  TRACE: 'trace',
  DEBUG: 'debug',
  INFO: 'info',
  WARN: 'warn',
  ERROR: 'error',
};

/** Adapts pino to the Temporal SDK's Logger so SDK and activity logs share format, level and redaction. */
export function temporalLoggerFrom(logger: Logger): TemporalLogger {
  const log = (level: LogLevel, message: string, meta?: LogMetadata) =>
    logger[TEMPORAL_TO_PINO[level]](meta ?? {}, message);
  return {
    log,
    trace: (message, meta) => log('TRACE', message, meta),
    debug: (message, meta) => log('DEBUG', message, meta),
    info: (message, meta) => log('INFO', message, meta),
    warn: (message, meta) => log('WARN', message, meta),
    error: (message, meta) => log('ERROR', message, meta),
  };
}
