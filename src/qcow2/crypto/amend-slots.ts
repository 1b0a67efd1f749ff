/**
 * qemu-img amend -o encrypt.state=active|inactive on a LUKS qcow2 image
 * (qcow2_amend_options → qcrypto_block_amend_options → block-luks.c
 * qcrypto_block_luks_amend_add_keyslot / _erase_keyslots). The master key is
 * recovered with the passphrase the image was opened with; only the changed
 * ranges of the header area are written back, nothing else of the image.
 */
import { CorruptImageError, InvalidArgumentError } from '../errors.js';
import { CRYPT_LUKS } from '../format/constants.js';
import type { ImageState } from '../state.js';
import { luksArea } from './image-crypto.js';
import { unlockLuks } from './luks.js';
import { addKeySlot, eraseKeySlots, type AreaChange } from './luks-slots.js';

export interface EncryptAmend {
  state: 'active' | 'inactive';
  /** encrypt.new-secret's passphrase (state=active). */
  newPassphrase?: string;
  /** encrypt.old-secret's passphrase (state=inactive: erase the slots it opens). */
  oldPassphrase?: string;
  keyslot?: number;
  iterTimeMs?: number;
  /** qemu-img amend --force: overwrite an active slot, erase the last one. */
  force?: boolean;
}

export function amendEncryption(s: ImageState, o: EncryptAmend): void {
  if (s.header.cryptMethod !== CRYPT_LUKS) throw new InvalidArgumentError('Only LUKS encrypted images support amending encryption options');
  const passphrase = s.openOptions.passphrase;
  if (passphrase === undefined) throw new InvalidArgumentError("Parameter 'encrypt.key-secret' is required for cipher");
  const ext = luksArea(s.ext.cryptoHeader, s.clusterSize, s.storage.size());
  const area = s.storage.read(ext.offset, ext.length);
  const read = (off: number, len: number): Uint8Array => {
    if (off + len > area.length) throw new CorruptImageError('Request for data outside of extension header');
    return area.subarray(off, off + len);
  };
  const luks = unlockLuks(read, area.length, passphrase);
  let changes: AreaChange[];
  if (o.state === 'active') {
    if (o.newPassphrase === undefined) throw new InvalidArgumentError("'new-secret' is required to activate a keyslot");
    changes = addKeySlot(area, luks.header, luks.spec, luks.masterKey, o.newPassphrase, {
      ...(o.keyslot === undefined ? {} : { slot: o.keyslot }),
      ...(o.iterTimeMs === undefined ? {} : { iterTimeMs: o.iterTimeMs }),
      force: o.force ?? false,
    }).changes;
  } else {
    changes = eraseKeySlots(area, luks.header, {
      ...(o.keyslot === undefined ? {} : { slot: o.keyslot }),
      ...(o.oldPassphrase === undefined ? {} : { oldPassphrase: o.oldPassphrase }),
      force: o.force ?? false,
    }).changes;
  }
  for (const c of changes) s.storage.write(ext.offset + c.offset, area.subarray(c.offset, c.offset + c.length));
  s.storage.flush();
}
