import { Qcow2Error } from '../qcow2/errors.js';

/** A qemu-img/qemu-io call did not finish within its timeout: a hang is a finding. */
export class HangError extends Qcow2Error {
  constructor(
    readonly tool: string,
    readonly args: readonly string[],
    readonly timeoutMs: number,
  ) {
    super(`${tool} ${args.join(' ')} did not finish within ${timeoutMs} ms`);
  }
}

/** A QEMU tool failed in a way the caller did not expect (could not start, unparsable output). */
export class QemuToolError extends Qcow2Error {
  constructor(
    message: string,
    readonly rc?: number,
    readonly stderr?: string,
  ) {
    super(message);
  }
}
