import { parseArgs } from 'node:util';
import { ConfigError, loadConfig } from './config.js';
import { Gateway } from './gateway.js';
import { createLogger } from './logger.js';

function usage(): string {
  return 'usage: npm start [-- --config FILE]\n  FILE is merged over config/default.json';
}

async function main(): Promise<void> {
  let args;
  try {
    args = parseArgs({ options: { config: { type: 'string', short: 'c' }, help: { type: 'boolean', short: 'h' } }, strict: true });
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n${usage()}\n`);
    process.exit(2);
  }
  if (args.values.help) {
    process.stdout.write(`${usage()}\n`);
    return;
  }
  let config;
  try {
    config = loadConfig(args.values.config);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  const log = createLogger(config.log.level);
  const gateway = await Gateway.start(config, log).catch((err: unknown) => {
    log.fatal({ err }, 'gateway failed to start');
    process.exit(1);
  });
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) process.exit(1); // a second signal: exit at once
    stopping = true;
    log.info({ signal }, 'stopping');
    gateway.shutdown(config.shutdown.drainMs).then(
      () => process.exit(0),
      (err: unknown) => {
        log.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('uncaughtException', (err) => log.error({ err }, 'uncaught exception (continuing)'));
  process.on('unhandledRejection', (err) => log.error({ err }, 'unhandled rejection (continuing)'));
}

void main();
