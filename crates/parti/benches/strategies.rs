//! Strategy benchmark: `cargo bench -p parti --bench strategies`.
//!
//! Runs the cases of the strategy report (examples/strategy_report.rs) with more repetitions
//! and prints the table (median assignment times, balance and movement), then `ConsistentHash`
//! side by side with a plain ring. No timing is asserted.

// The benchmark has its own `main` and does not use everything of the report.
#[allow(dead_code)]
#[path = "../examples/strategy_report.rs"]
mod report;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Cargo passes `--bench`; a filter argument restricts the strategies by name.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let mut rows = Vec::new();
    for case in report::cases() {
        for strategy in report::strategies() {
            if filter
                .as_deref()
                .is_none_or(|f| strategy.name().contains(f))
            {
                rows.push(report::measure(strategy.as_ref(), case, 31)?);
            }
        }
    }
    report::print_table(&rows);
    if filter
        .as_deref()
        .is_none_or(|f| "consistent_hash".contains(f))
    {
        report::print_ring(&report::compare_ring(61)?);
    }
    Ok(())
}
