fn main() {
    println!("cyb: command line coming");
}
