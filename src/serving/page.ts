// The page the server shows at /: pick or drop an image, see the label, each class's probability as a bar
// and the Grad-CAM overlay. One self-contained document (no scripts or styles from elsewhere); it calls
// ./info and ./predict relative to itself, so it works under a plugin prefix too.
export const PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>torchlearn</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 760px; margin: 2em auto; padding: 0 1em; color: #222; }
  h1 { font-size: 1.4em; margin-bottom: 0.2em; }
  #model { color: #666; margin-top: 0; }
  #drop { border: 2px dashed #aaa; border-radius: 8px; padding: 2em; text-align: center; cursor: pointer; }
  #drop.over { border-color: #2a7; background: #f3fbf6; }
  #result { display: flex; gap: 1.5em; margin-top: 1.5em; flex-wrap: wrap; }
  #images img { width: 240px; height: 240px; object-fit: contain; background: #111; border-radius: 4px; display: block; margin-bottom: 0.5em; }
  #label { font-size: 1.6em; font-weight: 600; margin: 0 0 0.6em; }
  .bar { display: grid; grid-template-columns: 10em 1fr 4.5em; align-items: center; gap: 0.5em; margin: 0.25em 0; }
  .bar .track { background: #eee; border-radius: 3px; height: 1em; }
  .bar .fill { background: #2a7; height: 100%; border-radius: 3px; }
  #status { color: #a22; min-height: 1.2em; }
  #timing { color: #666; font-size: 0.9em; }
</style>
</head>
<body>
<h1>torchlearn</h1>
<p id="model">loading the model's description...</p>
<div id="drop">Drop an image here, or <label><u>choose one</u><input id="file" type="file" accept="image/*" hidden></label></div>
<p id="status"></p>
<div id="result" hidden>
  <div id="images"><img id="picture" alt="the image"><img id="cam" alt="Grad-CAM of the predicted class"></div>
  <div><p id="label"></p><div id="bars"></div><p id="timing"></p></div>
</div>
<script>
const $ = (id) => document.getElementById(id);
fetch('info').then((r) => r.json()).then((i) => {
  $('model').textContent = i.arch + ', ' + i.size + ' px, classes: ' + i.classes.join(', ') + ' (' + i.device + ', LibTorch ' + i.torchVersion + ')';
}).catch(() => { $('model').textContent = ''; });
async function predict(file) {
  $('status').textContent = 'predicting...';
  $('picture').src = URL.createObjectURL(file);
  try {
    const r = await fetch('predict?gradcam=1', { method: 'POST', headers: { 'Content-Type': file.type || 'application/octet-stream' }, body: file });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    $('label').textContent = body.label;
    $('bars').replaceChildren(...Object.entries(body.probs).sort((a, b) => b[1] - a[1]).map(([name, p]) => {
      const row = document.createElement('div');
      row.className = 'bar';
      row.dataset.class = name;
      row.dataset.prob = String(p);
      const label = document.createElement('span');
      label.textContent = name;
      const track = document.createElement('div');
      track.className = 'track';
      const fill = document.createElement('div');
      fill.className = 'fill';
      fill.style.width = (100 * p).toFixed(1) + '%';
      track.append(fill);
      const value = document.createElement('span');
      value.textContent = (100 * p).toFixed(1) + '%';
      row.append(label, track, value);
      return row;
    }));
    $('cam').src = body.gradcam || '';
    $('timing').textContent = 'predicted in ' + body.timing.totalMs.toFixed(0) + ' ms';
    $('result').hidden = false;
    $('status').textContent = '';
    document.body.dataset.done = '1';
  } catch (e) {
    $('status').textContent = 'error: ' + e.message;
    document.body.dataset.done = 'error';
  }
}
$('file').addEventListener('change', (e) => { if (e.target.files[0]) predict(e.target.files[0]); });
const drop = $('drop');
drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => { e.preventDefault(); drop.classList.remove('over'); if (e.dataTransfer.files[0]) predict(e.dataTransfer.files[0]); });
</script>
</body>
</html>
`;
