// Compiles a Java source again and again in this JVM with javac (the
// jdk.compiler module) for args[1] seconds: a JVM with a few thousand
// classes loaded and a code cache full of compiled methods, as services
// have, for bench/jvm_busy.sh.
import javax.tools.JavaCompiler;
import javax.tools.ToolProvider;

public class JCompileLoop {
    public static void main(String[] args) throws Exception {
        JavaCompiler javac = ToolProvider.getSystemJavaCompiler();
        String out = java.nio.file.Files.createTempDirectory("jcompile").toString();
        long end = System.nanoTime() + Long.parseLong(args[1]) * 1_000_000_000L;
        int runs = 0;
        while (System.nanoTime() < end) {
            javac.run(null, null, null, "-d", out, args[0]);
            runs++;
        }
        System.out.println(runs + " compilations");
    }
}
