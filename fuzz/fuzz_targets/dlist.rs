#![no_main]
use cyrkit::format::dlist;
use libfuzzer_sys::fuzz_target;

// Any input either fails cleanly or parses; what parses must write back to text that
// parses to the same value and writes identically (the writer's output is canonical).
fuzz_target!(|data: &[u8]| {
    if let Ok(v) = dlist::parse(data) {
        let text = dlist::write(&v);
        let again = dlist::parse(&text).expect("writer output must parse");
        assert_eq!(again, v);
        assert_eq!(dlist::write(&again), text);
    }
});
