/** The qcow2 encryption layer: LUKS1 and legacy AES, secrets and encrypt options in qemu-img syntax. */
export * from './afsplit.js';
export * from './cipher.js';
export * from './data-path.js';
export * from './image-crypto.js';
export * from './luks.js';
export * from './luks-header.js';
export * from './luks-slots.js';
export * from './secrets.js';
