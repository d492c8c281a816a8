// The why502 binary is linked with the functions .cargo/hot-functions.txt
// names placed first (.cargo/link-hot-first, the linker .cargo/config.toml
// sets). Cargo does not know that the linker reads those files, so a new
// list would leave the old binary in place without these lines.
fn main() {
    println!("cargo:rerun-if-changed=.cargo/hot-functions.txt");
    println!("cargo:rerun-if-changed=.cargo/link-hot-first");
}
