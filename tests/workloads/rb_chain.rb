# The Ruby chain of the end-to-end tests: RbOuter#run -> rb_mid -> (a block,
# called by Integer#times or Array#map, C methods) -> rb_leaf, busy for
# ARGV[0] seconds (default 3).

def rb_leaf(n)
  acc = 0
  i = 0
  while i < n # LEAF LOOP START
    acc = (acc * 31 + i) % 1_000_003
    i += 1
  end
  acc
end

def rb_mid(round)
  total = 0
  if round.even?
    2.times { total += rb_leaf(20_000) }
  else
    [1, 2].map { |x| rb_leaf(20_000) + x }.each { |v| total += v }
  end
  total
end

class RbOuter
  def run(seconds)
    # CPU seconds, not wall time: a loaded machine still gets every sample.
    deadline = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID) + seconds
    sum = 0
    round = 0
    while Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID) < deadline
      sum += rb_mid(round)
      round += 1
    end
    sum
  end
end

puts RbOuter.new.run((ARGV[0] || 3).to_f)
