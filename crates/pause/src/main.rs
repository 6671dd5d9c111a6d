//! Holds a pod's network namespace open. As PID 1 it ignores signals with
//! default handlers, so the runtime removes it with SIGKILL.

fn main() {
    loop {
        std::thread::park();
    }
}
