// nodeOuter → nodeMid → nodeLeaf for argv[2] seconds (4 by default).
'use strict';

function nodeLeaf(n) {
  let s = 0;
  for (let i = 0; i < n; i++) {
    s += Math.sqrt(i) * 1.0001;
  }
  return s;
}

function nodeMid(n) {
  let s = 0;
  for (let k = 0; k < 4; k++) {
    s += nodeLeaf(n);
  }
  return s;
}

function nodeOuter(seconds) {
  const end = Date.now() + seconds * 1000;
  let total = 0;
  while (Date.now() < end) {
    total += nodeMid(20000);
  }
  return total;
}

console.log(nodeOuter(Number(process.argv[2] || 4)) > 0);
