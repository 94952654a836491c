"""Makes std's clocks on wasm32-unknown-unknown call `__twill_wasm_now_ms` (defined by the
Worker, JS Date.now()) instead of panicking. Used by bootstrap.sh on a copy of Debian's
std sources; fails loudly if the sources no longer look as expected."""
import sys

path = sys.argv[1]
src = open(path).read()
panic = 'panic!("time not implemented on this platform")'
if src.count(panic) != 2:
    sys.exit(f"{path}: expected two clock panics to replace, found {src.count(panic)}")
src = src.replace(panic, "Instant(now_duration())", 1)
src = src.replace(panic, "SystemTime(now_duration())", 1)
src += '''
unsafe extern "C" {
    /// Milliseconds since the Unix epoch, from the embedder (TwillDB Edge: JS Date.now()).
    fn __twill_wasm_now_ms() -> f64;
}

fn now_duration() -> Duration {
    // SAFETY: a plain function of no arguments, defined by the program that links std.
    let ms = unsafe { __twill_wasm_now_ms() };
    Duration::from_micros((ms.max(0.0) * 1000.0) as u64)
}
'''
open(path, "w").write(src)
