// JavaScript frames on both sides of V8's builtins for argv[2] seconds (3
// by default): a comparator called back by Array.prototype.sort, and an
// async function resumed from the microtask queue after each await.
'use strict';

function nodeCompare(a, b) {
  return (a % 1009) - (b % 1009) || a - b;
}

function nodeSort(n) {
  const values = Array.from({ length: n }, (_, i) => (i * 7919) % n);
  values.sort(nodeCompare);
  return values[0];
}

async function nodeAsync(end) {
  let total = 0;
  while (Date.now() < end) {
    await null;
    total += nodeSort(2000);
  }
  return total;
}

nodeAsync(Date.now() + Number(process.argv[2] || 3) * 1000).then((t) => console.log(t >= 0));
