/**
 * Failures of the QEMU tools the harness drives. They are not Qcow2Errors: a
 * Qcow2Error is the engine refusing an operation cleanly, and code that reads
 * `instanceof Qcow2Error` as "refused" (the ts target's op loop, the hostile
 * runner, the CLI's reportError) must never take a hung or broken oracle for
 * a clean refusal.
 */
export class ToolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** A qemu-img/qemu-io call did not finish within its timeout: a hang is a finding. */
export class HangError extends ToolError {
  constructor(
    readonly tool: string,
    readonly args: readonly string[],
    readonly timeoutMs: number,
  ) {
    super(`${tool} ${args.join(' ')} did not finish within ${timeoutMs} ms`);
  }
}

/** A QEMU tool failed in a way the caller did not expect (could not start, unparsable output). */
export class QemuToolError extends ToolError {
  constructor(
    message: string,
    readonly rc?: number,
    readonly stderr?: string,
  ) {
    super(message);
  }
}
