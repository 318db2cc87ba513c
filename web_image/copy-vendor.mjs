// Copies the browser builds the page uses from node_modules into the Python package's static
// files (run by `npm run build` after `npm ci`: scripts/setup.sh and web_image/Dockerfile).
import { copyFileSync, mkdirSync } from "node:fs";

const out = "voicetrack_web/static/vendor";
mkdirSync(out, { recursive: true });
for (const [src, dst] of [
  ["node_modules/wavesurfer.js/dist/wavesurfer.min.js", "wavesurfer.min.js"],
  ["node_modules/wavesurfer.js/LICENSE", "wavesurfer.LICENSE.txt"],
]) {
  copyFileSync(src, `${out}/${dst}`);
  console.log(`vendor: ${src} -> ${out}/${dst}`);
}
