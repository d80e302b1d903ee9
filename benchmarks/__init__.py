"""fastminerf benchmarks: measured side by side in one run, results written as JSON under benchmarks/results/."""
