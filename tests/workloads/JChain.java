// jOuter → jMid → jLeaf for args[0] seconds (4 by default): interpreted
// first, then compiled by C1 and C2, which inline jLeaf into jMid. A second
// thread, jAlloc, allocates short-lived arrays so the garbage collector's
// threads run too.
public class JChain {
    static volatile long kept;

    static double jLeaf(int n) {
        double s = 0;
        for (int i = 0; i < n; i++) {
            s += Math.sqrt(i) * 1.0001;
        }
        return s;
    }

    static double jMid(int n) {
        double s = 0;
        for (int k = 0; k < 4; k++) {
            s += jLeaf(n);
        }
        return s;
    }

    static double jOuter(long seconds) {
        long end = System.nanoTime() + seconds * 1_000_000_000L;
        double total = 0;
        while (System.nanoTime() < end) {
            total += jMid(20000);
        }
        return total;
    }

    static void jAlloc() {
        // A ring of live arrays, replaced as it turns: each collection
        // copies what is still in it.
        long[][] ring = new long[256][];
        for (int i = 0; ; i++) {
            ring[i & 255] = new long[1 << 12];
            kept += ring[(i + 1) & 255] == null ? 0 : 1;
            if (i % 8 == 0) {
                try {
                    Thread.sleep(1);
                } catch (InterruptedException e) {
                    return;
                }
            }
        }
    }

    public static void main(String[] args) {
        long seconds = args.length > 0 ? Long.parseLong(args[0]) : 4;
        Thread alloc = new Thread(JChain::jAlloc, "jAlloc");
        alloc.setDaemon(true);
        alloc.start();
        System.out.println(jOuter(seconds) > 0);
    }
}
