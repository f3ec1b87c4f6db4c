// The bench's training images: uniformly random pixels from a fixed xorshift stream, as the PyTorch side
// draws uniform pixels (nearly constant images gave nearly constant activations and tiny gradients, whose
// subnormal floats slowed the CPU's arithmetic erratically). The same bytes in every process.
export function randomPixels(bytes: number): Uint8Array {
  const words = new Uint32Array(Math.ceil(bytes / 4));
  let s = 0x9e3779b9;
  for (let i = 0; i < words.length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    words[i] = s >>> 0;
  }
  return new Uint8Array(words.buffer, 0, bytes);
}
