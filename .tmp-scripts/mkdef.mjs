import { toBinary } from '@bufbuild/protobuf';
import { DefinitionSchema } from '/work/main/dist/gen/buildkit/ops_pb.js';
import { copy, local, marshal, mkfile, scratch } from '/work/main/dist/llb/builder.js';
const which = process.argv[2];
let st = scratch().file(mkfile('/hello.txt', 0o644, 'hello ' + (process.argv[3] ?? '') + '\n'));
if (which === 'local') st = st.file(copy(local('ctx'), '/', '/ctx/'));
process.stdout.write(toBinary(DefinitionSchema, marshal(st)));
