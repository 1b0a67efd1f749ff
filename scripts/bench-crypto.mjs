#!/usr/bin/env node
// In-process figures for the encrypted-image hot loops, node:crypto path
// against the addon's (native/crypto.c), interleaved round by round so that
// load from other processes hits both alike; prints medians of CPU time.
// Run after `npm run build`: node scripts/bench-crypto.mjs [rounds]
import { randomBytes } from 'node:crypto';
import { afMerge, nativeAf } from '../dist/qcow2/crypto/afsplit.js';
import { makeSectorCipher, nativeSectorCipher, parseCipherSpec } from '../dist/qcow2/crypto/cipher.js';

const rounds = Number(process.argv[2] ?? 9);
const cipherNative = nativeSectorCipher();
const afNative = nativeAf();
if (!cipherNative || !afNative) {
  process.stderr.write('bench-crypto: the addon has no native crypto calls (npm run build:native)\n');
  process.exit(1);
}

const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

/**
 * CPU seconds (user + system of this process) per call of fn, repeated until
 * minMs of CPU has passed: CPU time, not wall time, as the machine is shared.
 */
function time(fn, minMs = 150) {
  let n = 0;
  const t0 = process.cpuUsage();
  let dt;
  do {
    fn();
    n++;
    const u = process.cpuUsage(t0);
    dt = (u.user + u.system) / 1e6;
  } while (dt * 1000 < minMs);
  return dt / n;
}

function cipherCase(modeString, keyBytes, ioBytes) {
  const spec = parseCipherSpec('aes', modeString, keyBytes);
  const key = randomBytes(keyBytes);
  const data = randomBytes(ioBytes);
  const paths = { js: makeSectorCipher(spec, key, null), native: makeSectorCipher(spec, key, cipherNative) };
  const mibs = { js: { enc: [], dec: [] }, native: { enc: [], dec: [] } };
  for (let r = 0; r < rounds; r++) {
    for (const p of r % 2 ? ['native', 'js'] : ['js', 'native']) {
      const c = paths[p];
      mibs[p].enc.push(ioBytes / 2 ** 20 / time(() => c.encrypt(1000, data)));
      mibs[p].dec.push(ioBytes / 2 ** 20 / time(() => c.decrypt(1000, data)));
    }
  }
  const f = (x) => median(x).toFixed(0).padStart(6);
  console.log(
    `aes ${modeString.padEnd(16)} key ${String(keyBytes).padStart(2)} B, ${String(ioBytes / 1024).padStart(3)} KiB calls: ` +
      `encrypt ${f(mibs.js.enc)} -> ${f(mibs.native.enc)} MiB/s, decrypt ${f(mibs.js.dec)} -> ${f(mibs.native.dec)} MiB/s`,
  );
}

function mergeCase(hash, keyBytes, stripes = 4000) {
  const material = randomBytes(keyBytes * stripes);
  const ms = { js: [], native: [] };
  for (let r = 0; r < rounds; r++) {
    for (const p of r % 2 ? ['native', 'js'] : ['js', 'native']) {
      const nat = p === 'native' ? afNative : null;
      ms[p].push(time(() => afMerge(hash, material, keyBytes, stripes, nat)) * 1000);
    }
  }
  console.log(
    `afMerge ${hash.padEnd(9)} key ${String(keyBytes).padStart(2)} B x ${stripes} stripes: ` +
      `${median(ms.js).toFixed(2)} -> ${median(ms.native).toFixed(3)} ms`,
  );
}

console.log(`node:crypto -> native, medians of ${rounds} interleaved rounds`);
for (const io of [512, 4096, 65536]) cipherCase('xts-plain64', 64, io);
cipherCase('xts-plain64', 32, 65536);
cipherCase('cbc-essiv:sha256', 32, 65536);
cipherCase('cbc-plain64', 16, 65536);
mergeCase('sha256', 32);
mergeCase('sha256', 64);
mergeCase('sha1', 64);
mergeCase('sha512', 64);
