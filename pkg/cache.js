// Cache API: fetched weights kept per file, keyed by URL + validator (ETag / Last-Modified), with an
// in-memory fallback when the quota is exceeded.

const CACHE_NAME = "taskloom-weights-v1";
const CACHED = /\.(safetensors|gguf|bin)$/;
let cacheEnabled = typeof caches !== "undefined";
let memoryCache = new Map();

/**
 * Turns the Cache API caching of weight files on or off (default: on where `caches` exists, i.e. a
 * secure browser context). Each weights file (a base model, each adapter, each expert shard) is its
 * own entry, keyed by its URL and the server's ETag / Last-Modified, so a new adapter downloads only
 * itself and a changed file is fetched again. When the quota is exceeded the file is kept in memory
 * for this page instead, with a console warning.
 */
export function setCaching(on) {
  cacheEnabled = Boolean(on) && typeof caches !== "undefined";
}

/** Deletes the weights cache (Cache API entries and the in-memory fallback). */
export async function clearCache() {
  memoryCache = new Map();
  if (typeof caches !== "undefined") await caches.delete(CACHE_NAME);
}

/** URL + validator; null when the server sends none (then the file could change unseen: not cached). */
function cacheKey(url, res) {
  const v = res.headers.get("etag") || res.headers.get("last-modified");
  if (!v) return null;
  // A query parameter, not a fragment: the Cache API ignores fragments when matching.
  const href = new URL(url, globalThis.location?.href).href;
  return `${href}${href.includes("?") ? "&" : "?"}taskloom-cache=${encodeURIComponent(v)}`;
}

/** `fetch(url)`; weights files go through the cache (validated with a HEAD request). */
export async function cachedFetch(url, signal) {
  const href = String(url);
  if (!CACHED.test(new URL(href, globalThis.location?.href).pathname) || !(cacheEnabled || memoryCache.size)) return fetch(url, { signal });
  let head;
  try {
    head = await fetch(url, { method: "HEAD", signal });
  } catch (e) {
    if (e?.name === "AbortError") throw e;
    return fetch(url, { signal });
  }
  if (!head.ok) return head;
  const key = cacheKey(href, head);
  if (!key) return fetch(url, { signal });
  const mem = memoryCache.get(key);
  if (mem) return new Response(mem, { headers: { "content-length": String(mem.byteLength), "x-taskloom-cache": "memory" } });
  let cache = null;
  if (cacheEnabled) {
    try {
      cache = await caches.open(CACHE_NAME);
      const hit = await cache.match(key);
      if (hit) return hit;
    } catch {
      cache = null;
    }
  }
  const res = await fetch(url, { signal });
  if (!res.ok || !cacheEnabled) return res;
  const bytes = await res.arrayBuffer();
  const headers = { "content-type": res.headers.get("content-type") ?? "application/octet-stream", "content-length": String(bytes.byteLength), "x-taskloom-cache": "cache" };
  try {
    if (!cache) throw new Error("the Cache API is not available here");
    // Old versions of this file (another validator) are dropped first.
    const prefix = key.slice(0, key.lastIndexOf("taskloom-cache=") + "taskloom-cache=".length);
    for (const k of await cache.keys()) if (k.url.startsWith(prefix)) await cache.delete(k);
    await cache.put(key, new Response(bytes.slice(0), { headers }));
  } catch (e) {
    console.warn(`taskloom: could not cache ${href} (${e?.name === "QuotaExceededError" ? "storage quota exceeded" : e?.message ?? e}); keeping it in memory for this page`);
    memoryCache.set(key, bytes.slice(0));
  }
  return new Response(bytes, { headers: { ...headers, "x-taskloom-cache": "miss" } });
}
