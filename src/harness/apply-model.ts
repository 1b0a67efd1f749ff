/** Maps harness ops onto the model's expect/apply pairs (each op kind's spec in ./ops/ says how). */
export { applyOp, expectOp } from './ops/index.js';
