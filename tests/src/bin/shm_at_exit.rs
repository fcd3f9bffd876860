//! Leaks two named segments and leaves with `std::process::exit`, which
//! runs no destructor: the one it owns must still be unlinked (at `exit()`),
//! the one whose name it handed over must stay.

use mproc::shared_memory::SharedMemory;

fn main() {
    let _rt = mproc::init().expect("init");
    let owned = SharedMemory::create(64).expect("create");
    let mut handed_over = SharedMemory::create(64).expect("create");
    handed_over.set_unlink_on_drop(false);
    println!("owned {}", owned.name());
    println!("kept {}", handed_over.name());
    std::mem::forget(owned);
    std::mem::forget(handed_over);
    std::process::exit(0);
}
