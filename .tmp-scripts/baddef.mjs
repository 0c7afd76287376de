import { toBinary } from '@bufbuild/protobuf';
import { DefinitionSchema } from '/work/main/dist/gen/buildkit/ops_pb.js';
import { copy, local, marshal, scratch } from '/work/main/dist/llb/builder.js';
process.stdout.write(toBinary(DefinitionSchema, marshal(scratch().file(copy(local('ctx'), '/nope', '/x')))));
