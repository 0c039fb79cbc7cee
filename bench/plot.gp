# The benchmark suite's plot (bench/run.sh): throughput, calls per server-CPU-second and p50
# latency per case, one bar per server; and, when payhost-flow-bench --versus grpc wrote flow.tsv,
# the payment flow's figures, one bar per case. Variables: data (folder of the --plot-data
# tables), output (PNG path), subtitle.
flow = system("test -f '" . data . "/flow.tsv' && echo 1 || echo 0") eq "1"
set terminal pngcairo size 1400,(flow ? 1700 : 1300) font "sans,10"
set output output
set multiplot layout (flow ? 4 : 3),1 title "payhost-bench-suite: authorize, payhostd vs baselines (" . subtitle . ")"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set key top left horizontal
set grid ytics
set xtics nomirror noenhanced rotate by 12 right font ",9"
set bmargin 4
set ytics nomirror
set logscale y
# A server not measured in a case (TLS: only payhostd, payhostd-plain and bare-buf) is "?".
set datafile missing "?"
set format y "%g"
set title "throughput: calls per second, log scale (client and servers share the cores)"
plot for [i=2:*] data."/throughput.tsv" using i:xtic(1) title columnheader(i)
set title "efficiency: calls per server-CPU-second, log scale (higher is better)"
plot for [i=2:*] data."/cpu.tsv" using i:xtic(1) title columnheader(i)
set title "latency: p50 in microseconds, log scale (lower is better)"
plot for [i=2:*] data."/latency.tsv" using i:xtic(1) title columnheader(i)
if (flow) {
  set title "payment flow (fraud screen, card, FX, ledger; durable): payhostd vs the same services as gRPC processes, log scale"
  plot for [i=2:*] data."/flow.tsv" using i:xtic(1) title columnheader(i)
}
unset multiplot
