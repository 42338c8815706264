# Plots the fleet simulation (benches/fleet.rs) for scripts/bench.sh:
#   gnuplot -e "out='docs/fleet.png'; dir='target/bench'; fleets='1000 10000'; steady='...'" scripts/bench/fleet.gp
# Reads DIR/fleet-N-10s.csv (10 s bins: t,requests_per_s,live_pct,ratio) made by bench.sh.
set terminal pngcairo size 1200, 380 * words(fleets) font ",10"
set output out
set datafile separator ","
set multiplot layout words(fleets), 1
set key outside bottom center horizontal
set xlabel "simulated time (s)"
set ylabel "upstream requests/s (10 s bins)"
set y2label "agents holding a live token (%)"
set y2range [0:105]
set ytics nomirror
set y2tics 0, 25, 100
set grid ytics
set xrange [0:2100]
set style rect fc rgb "#f4d0d0" fs solid 0.5 noborder
set object 1 rect from 300, graph 0 to 900, graph 1 behind
set object 2 rect from 1500, graph 0 to 1530, graph 1 behind fc rgb "#d0d8f4"
set label 1 "upstream outage (503)" at 310, graph 0.95
set label 2 "mass reboot" at 1535, graph 0.95
do for [i=1:words(fleets)] {
  n = word(fleets, i)
  f = sprintf("%s/fleet-%s-10s.csv", dir, n)
  stats f using 2 every ::12::29 nooutput prefix "S"
  st = S_mean
  set title sprintf("%s agents, 60 s tokens: steady %.1f req/s (120-300 s)", n, st)
  set yrange [0:*]
  plot f using 1:2 with steps lw 2 lc rgb "#1f4e9c" title "requests/s", \
       st * 2 with lines dt 2 lc rgb "#c03030" title "2x steady (goal)", \
       f using 1:3 axes x1y2 with lines lw 1 lc rgb "#2a9d3a" title "live token %"
}
unset multiplot
