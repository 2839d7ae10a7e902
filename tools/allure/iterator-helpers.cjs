// Allure Report 3's quality gate uses ES2025 iterator helpers (Iterator.prototype.toArray,
// map, filter, ...), which Node.js gained in version 22. This machine's Node is 20: add the
// few helpers as plain functions on %IteratorPrototype% when they are missing.
"use strict";
const IteratorPrototype = Object.getPrototypeOf(Object.getPrototypeOf([][Symbol.iterator]()));
const helpers = {
  toArray() { return Array.from(this); },
  *map(fn) { let i = 0; for (const v of this) yield fn(v, i++); },
  *filter(fn) { let i = 0; for (const v of this) if (fn(v, i++)) yield v; },
  *flatMap(fn) { let i = 0; for (const v of this) yield* fn(v, i++); },
  *take(n) { if (n <= 0) return; let i = 0; for (const v of this) { yield v; if (++i >= n) return; } },
  *drop(n) { let i = 0; for (const v of this) if (i++ >= n) yield v; },
  forEach(fn) { let i = 0; for (const v of this) fn(v, i++); },
  some(fn) { let i = 0; for (const v of this) if (fn(v, i++)) return true; return false; },
  every(fn) { let i = 0; for (const v of this) if (!fn(v, i++)) return false; return true; },
  find(fn) { let i = 0; for (const v of this) if (fn(v, i++)) return v; return undefined; },
  reduce(fn, ...init) {
    let acc = init.length ? init[0] : undefined; let first = !init.length; let i = 0;
    for (const v of this) { if (first) { acc = v; first = false; } else { acc = fn(acc, v, i); } i++; }
    return acc;
  },
};
for (const [name, fn] of Object.entries(helpers)) {
  if (typeof IteratorPrototype[name] !== "function") {
    Object.defineProperty(IteratorPrototype, name, { value: fn, writable: true, configurable: true });
  }
}
