import { Health, HealthCheckResponse_ServingStatus } from '../../gen/grpc/health_pb.js';
import { methodPath } from '../tunnel/metadata.js';
import { unaryHandler, type SessionServices } from '../tunnel/server.js';

/**
 * grpc.health.v1.Health/Check, which upstream's daemon calls every 5 s over the session and
 * which ends the session after two failures in a row. Always SERVING while the session is up.
 */
export function healthService(): SessionServices {
  return {
    [methodPath(Health.method.check)]: unaryHandler(Health.method.check, async () => ({
      status: HealthCheckResponse_ServingStatus.SERVING,
    })),
  };
}
