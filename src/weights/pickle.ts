// The small subset of Python's pickle that torch.save(state_dict) uses, read without executing
// anything: only the globals listed in GLOBALS are recognised, everything else is an error.
// (LibTorch's own torch::pickle_load turns the OrderedDict of a state_dict into None: PyTorch
// issues 100741 and 95362.)

export interface StorageRef {
  kind: 'storage';
  dtype: string; // safetensors dtype name
  key: string;
  numel: number;
}

export interface TensorRef {
  kind: 'tensor';
  storage: StorageRef;
  offset: number;
  shape: number[];
  stride: number[];
}

type Global = { kind: 'global'; name: string };
type PyValue = unknown;

const STORAGE_DTYPES: Record<string, string> = {
  'torch.FloatStorage': 'F32',
  'torch.DoubleStorage': 'F64',
  'torch.HalfStorage': 'F16',
  'torch.BFloat16Storage': 'BF16',
  'torch.LongStorage': 'I64',
  'torch.IntStorage': 'I32',
  'torch.ShortStorage': 'I16',
  'torch.CharStorage': 'I8',
  'torch.ByteStorage': 'U8',
  'torch.BoolStorage': 'BOOL',
};
const TORCH_DTYPES: Record<string, string> = {
  'torch.float32': 'F32', 'torch.float': 'F32', 'torch.float64': 'F64', 'torch.double': 'F64',
  'torch.float16': 'F16', 'torch.half': 'F16', 'torch.bfloat16': 'BF16', 'torch.int64': 'I64',
  'torch.long': 'I64', 'torch.int32': 'I32', 'torch.int': 'I32', 'torch.int16': 'I16', 'torch.int8': 'I8',
  'torch.uint8': 'U8', 'torch.bool': 'BOOL',
};
const GLOBALS = new Set([
  'collections.OrderedDict',
  'torch._utils._rebuild_tensor_v2',
  'torch._utils._rebuild_tensor',
  'torch._utils._rebuild_parameter',
  'torch.storage.UntypedStorage',
  'builtins.set',
  ...Object.keys(STORAGE_DTYPES),
  ...Object.keys(TORCH_DTYPES),
]);

class Mark {}
const MARK = new Mark();

/** Parses a state_dict pickle; persistent ids become StorageRef, tensors TensorRef. */
export function unpickle(buf: Buffer, where: string): PyValue {
  return unpickleAt(buf, where, 0).value;
}

/** Parses the pickle that starts at byte `start` (a legacy .pth is several in a row): its value, and the byte after its STOP. */
export function unpickleAt(buf: Buffer, where: string, start: number): { value: PyValue; end: number } {
  let p = start;
  const stack: PyValue[] = [];
  const memo = new Map<number, PyValue>();
  const fail = (why: string): never => {
    throw new Error(`${where}: cannot read the pickle (${why}); torchlearn reads plain state_dict checkpoints only`);
  };
  const need = (n: number) => {
    if (p + n > buf.length) fail('it ends early: truncated file?');
  };
  const u8 = () => (need(1), buf[p++]);
  const u16 = () => (need(2), (p += 2), buf.readUInt16LE(p - 2));
  const u32 = () => (need(4), (p += 4), buf.readUInt32LE(p - 4));
  const i32 = () => (need(4), (p += 4), buf.readInt32LE(p - 4));
  const str = (n: number, enc: BufferEncoding = 'utf8') => (need(n), (p += n), buf.toString(enc, p - n, p));
  const line = () => {
    const e = buf.indexOf(0x0a, p);
    if (e < 0) fail('unterminated line');
    const s = buf.toString('latin1', p, e);
    p = e + 1;
    return s;
  };
  const pop = () => (stack.length ? stack.pop() : fail('stack underflow'));
  const popMark = (): PyValue[] => {
    for (let i = stack.length - 1; i >= 0; i--) {
      if (stack[i] === MARK) {
        const items = stack.slice(i + 1);
        stack.length = i;
        return items;
      }
    }
    return fail('no mark on the stack');
  };
  const global = (mod: string, name: string): Global => {
    const full = `${mod}.${name}`;
    if (!GLOBALS.has(full)) fail(`it refers to ${full}, which is not part of a state_dict`);
    return { kind: 'global', name: full };
  };
  const call = (fn: PyValue, args: PyValue): PyValue => {
    if (!fn || (fn as Global).kind !== 'global' || !Array.isArray(args)) fail('bad REDUCE');
    const name = (fn as Global).name;
    if (name === 'collections.OrderedDict' || name === 'builtins.set') return new Map<string, PyValue>();
    if (name === 'torch._utils._rebuild_tensor_v2' || name === 'torch._utils._rebuild_tensor') {
      const [storage, offset, shape, stride] = args as [StorageRef, number, number[], number[]];
      if (!storage || storage.kind !== 'storage' || !Array.isArray(shape) || !Array.isArray(stride)) fail('bad tensor record');
      return { kind: 'tensor', storage, offset: Number(offset), shape: shape.map(Number), stride: stride.map(Number) } as TensorRef;
    }
    if (name === 'torch._utils._rebuild_parameter') return (args as PyValue[])[0];
    return fail(`cannot call ${name}`);
  };
  for (;;) {
    const op = u8();
    switch (op) {
      case 0x80: u8(); break; // PROTO
      case 0x95: need(8); p += 8; break; // FRAME
      case 0x2e: return { value: pop(), end: p }; // STOP
      case 0x28: stack.push(MARK); break; // MARK
      case 0x7d: stack.push(new Map()); break; // EMPTY_DICT
      case 0x5d: stack.push([]); break; // EMPTY_LIST
      case 0x29: stack.push([]); break; // EMPTY_TUPLE
      case 0x8f: stack.push(new Map()); break; // EMPTY_SET
      case 0x4e: stack.push(null); break; // NONE
      case 0x88: stack.push(true); break; // NEWTRUE
      case 0x89: stack.push(false); break; // NEWFALSE
      case 0x4a: stack.push(i32()); break; // BININT
      case 0x4b: stack.push(u8()); break; // BININT1
      case 0x4d: stack.push(u16()); break; // BININT2
      case 0x8a: { // LONG1
        const n = u8();
        need(n);
        let v = 0n;
        for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(buf[p + i]);
        if (n > 0 && buf[p + n - 1] & 0x80) v -= 1n << BigInt(8 * n);
        p += n;
        stack.push(Number(v));
        break;
      }
      case 0x47: need(8); stack.push(buf.readDoubleBE(p)); p += 8; break; // BINFLOAT
      case 0x58: stack.push(str(u32())); break; // BINUNICODE
      case 0x8c: stack.push(str(u8())); break; // SHORT_BINUNICODE
      case 0x8d: { need(8); const n = Number(buf.readBigUInt64LE(p)); p += 8; stack.push(str(n)); break; } // BINUNICODE8
      case 0x42: { const n = u32(); need(n); stack.push(buf.subarray(p, p + n)); p += n; break; } // BINBYTES
      case 0x43: { const n = u8(); need(n); stack.push(buf.subarray(p, p + n)); p += n; break; } // SHORT_BINBYTES
      case 0x55: stack.push(str(u8(), 'latin1')); break; // SHORT_BINSTRING
      case 0x71: memo.set(u8(), stack[stack.length - 1]); break; // BINPUT
      case 0x72: memo.set(u32(), stack[stack.length - 1]); break; // LONG_BINPUT
      case 0x94: memo.set(memo.size, stack[stack.length - 1]); break; // MEMOIZE
      case 0x68: { const k = u8(); if (!memo.has(k)) fail('bad memo reference'); stack.push(memo.get(k)); break; } // BINGET
      case 0x6a: { const k = u32(); if (!memo.has(k)) fail('bad memo reference'); stack.push(memo.get(k)); break; } // LONG_BINGET
      case 0x63: { const mod = line(); stack.push(global(mod, line())); break; } // GLOBAL
      case 0x93: { const name = pop(); const mod = pop(); stack.push(global(String(mod), String(name))); break; } // STACK_GLOBAL
      case 0x74: stack.push(popMark()); break; // TUPLE
      case 0x85: stack.push([pop()]); break; // TUPLE1
      case 0x86: { const b = pop(); stack.push([pop(), b]); break; } // TUPLE2
      case 0x87: { const c = pop(); const b = pop(); stack.push([pop(), b, c]); break; } // TUPLE3
      case 0x6c: stack.push(popMark()); break; // LIST
      case 0x64: { // DICT
        const items = popMark();
        const m = new Map<string, PyValue>();
        for (let i = 0; i + 1 < items.length; i += 2) m.set(String(items[i]), items[i + 1]);
        stack.push(m);
        break;
      }
      case 0x61: { const v = pop(); const l = stack[stack.length - 1]; if (!Array.isArray(l)) return fail('APPEND to a non-list'); l.push(v); break; }
      case 0x65: { const items = popMark(); const l = stack[stack.length - 1]; if (!Array.isArray(l)) return fail('APPENDS to a non-list'); l.push(...items); break; }
      case 0x73: { // SETITEM
        const v = pop();
        const k = pop();
        const d = stack[stack.length - 1];
        if (!(d instanceof Map)) return fail('SETITEM on a non-dict');
        d.set(String(k), v);
        break;
      }
      case 0x75: { // SETITEMS
        const items = popMark();
        const d = stack[stack.length - 1];
        if (!(d instanceof Map)) return fail('SETITEMS on a non-dict');
        for (let i = 0; i + 1 < items.length; i += 2) d.set(String(items[i]), items[i + 1]);
        break;
      }
      case 0x90: { popMark(); break; } // ADDITEMS (to a set): ignored
      case 0x52: { const args = pop(); const fn = pop(); stack.push(call(fn, args)); break; } // REDUCE
      case 0x81: { const args = pop(); const cls = pop(); stack.push(call(cls, args)); break; } // NEWOBJ
      case 0x62: { pop(); break; } // BUILD: state of an OrderedDict/_metadata is not needed
      case 0x51: { // BINPERSID: ('storage', storage_type, key, location, numel[, view_metadata])
        const pid = pop();
        if (!Array.isArray(pid) || pid[0] !== 'storage') fail('unknown persistent id');
        const [, type, key, , n] = pid as [string, Global, string, string, number];
        const dtype = type && STORAGE_DTYPES[type.name] ? STORAGE_DTYPES[type.name] : type && TORCH_DTYPES[type.name];
        if (!dtype) fail(`unsupported storage type ${type?.name}`);
        stack.push({ kind: 'storage', dtype, key: String(key), numel: Number(n) } as StorageRef);
        break;
      }
      default:
        fail(`unsupported opcode 0x${op.toString(16)} at byte ${p - 1}`);
    }
  }
}

// --- writer ---------------------------------------------------------------------------------------

/** Writes the pickle torch.save(state_dict) would: an OrderedDict of _rebuild_tensor_v2 records. */
export function pickleStateDict(entries: { name: string; dtype: string; shape: number[]; key: string }[]): Buffer {
  const parts: Buffer[] = [];
  const b = (...bytes: number[]) => parts.push(Buffer.from(bytes));
  const s = (text: string) => {
    const t = Buffer.from(text, 'utf8');
    const h = Buffer.alloc(5);
    h[0] = 0x58;
    h.writeUInt32LE(t.length, 1);
    parts.push(h, t);
  };
  const int = (v: number) => {
    const h = Buffer.alloc(5);
    h[0] = 0x4a;
    h.writeInt32LE(v, 1);
    parts.push(h);
  };
  const glob = (mod: string, name: string) => parts.push(Buffer.from(`c${mod}\n${name}\n`, 'latin1'));
  const storageName = Object.fromEntries(Object.entries(STORAGE_DTYPES).map(([k, v]) => [v, k.slice(6)]));
  const tuple = (vals: number[]) => {
    b(0x28);
    vals.forEach(int);
    b(0x74);
  };
  b(0x80, 0x02);
  glob('collections', 'OrderedDict');
  b(0x29, 0x52); // ) R
  b(0x28); // MARK for SETITEMS
  for (const e of entries) {
    const n = e.shape.reduce((a, c) => a * c, 1);
    const stride = e.shape.map((_, i) => e.shape.slice(i + 1).reduce((a, c) => a * c, 1));
    s(e.name);
    glob('torch._utils', '_rebuild_tensor_v2');
    b(0x28); // args
    b(0x28); // persistent id tuple
    s('storage');
    glob('torch', storageName[e.dtype]);
    s(e.key);
    s('cpu');
    int(n);
    b(0x74, 0x51); // TUPLE, BINPERSID
    int(0);
    tuple(e.shape);
    tuple(stride);
    b(0x89); // requires_grad False
    glob('collections', 'OrderedDict');
    b(0x29, 0x52);
    b(0x74, 0x52); // TUPLE, REDUCE
  }
  b(0x75, 0x2e); // SETITEMS, STOP
  return Buffer.concat(parts);
}
