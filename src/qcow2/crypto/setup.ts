/**
 * Encryption of a new image (QEMU: qcow2_set_up_encryption, called by
 * qcow2_co_create after the image has its size, so its L1 table comes first).
 * LUKS: the header area takes the first free clusters (qcow2_crypto_hdr_init_func
 * allocates payload-offset bytes), is written zero-padded to whole clusters,
 * and the full disk encryption header extension points to it. Legacy AES has
 * no header: crypt_method alone says it.
 */
import { CRYPT_AES, CRYPT_LUKS } from '../format/constants.js';
import type { ImageState } from '../state.js';
import type { EncryptCreate } from '../types.js';
import { createImageLuks, legacyAesCrypto } from './image-crypto.js';

export function setUpEncryption(s: ImageState, e: EncryptCreate): void {
  if (e.format === 'aes') {
    s.header.cryptMethod = CRYPT_AES;
    s.crypto = legacyAesCrypto(e.passphrase);
    s.writeHeader();
    return;
  }
  const created = createImageLuks(e.passphrase, e.luks);
  const cs = s.clusterSize;
  const clusters = Math.ceil(created.area.length / cs);
  const offset = s.refcounts.allocClusters(clusters);
  const padded = new Uint8Array(clusters * cs);
  padded.set(created.area);
  s.storage.write(offset, padded);
  s.ext.cryptoHeader = { offset, length: created.area.length };
  s.header.cryptMethod = CRYPT_LUKS;
  s.crypto = created.crypto;
  s.writeHeader();
}
