/**
 * A process that holds an image open through our engine until its standard
 * input closes (or it is killed), so the tests can try QEMU's tools against
 * an image we hold. argv: MODE FILE, MODE one of rw, ro, ro-shared (-U),
 * raw-rw. Prints "ready" once the image is open, "error: ..." if it is not.
 */
import { openImageFile } from '../../src/qcow2/open-file.js';

const [mode, file] = process.argv.slice(2);
try {
  const img = openImageFile(file!, {
    readOnly: mode !== 'rw' && mode !== 'raw-rw',
    forceShare: mode === 'ro-shared',
    format: mode === 'raw-rw' ? 'raw' : undefined,
  });
  process.stdout.write('ready\n');
  process.stdin.resume();
  process.stdin.on('end', () => {
    img.close();
    process.exit(0);
  });
} catch (e) {
  process.stdout.write(`error: ${(e as Error).name}: ${(e as Error).message.replace(/\n/g, ' ')}\n`);
  process.exit(1);
}
