// A scratch app like a user's: the packed `taskloom` tarball installed from npm pack, bundled by Vite.
// Module workers (taskloom/worker) need the ES worker format.
export default { logLevel: "warn", worker: { format: "es" }, build: { outDir: "dist", emptyOutDir: true } };
