import { Health, HealthCheckResponse_ServingStatus } from '../../gen/grpc/health_pb.js';
import { unaryHandler, type SessionServices } from '../tunnel/server.js';

/** Health/Check's path, written out (see AUTH_PATHS in auth.ts). */
export const HEALTH_CHECK_PATH = '/grpc.health.v1.Health/Check';

/**
 * grpc.health.v1.Health/Check, which upstream's daemon calls every 5 s over the session and
 * which ends the session after two failures in a row. Always SERVING while the session is up.
 */
export function healthService(): SessionServices {
  return {
    [HEALTH_CHECK_PATH]: unaryHandler(() => Health.method.check, async () => ({
      status: HealthCheckResponse_ServingStatus.SERVING,
    })),
  };
}
