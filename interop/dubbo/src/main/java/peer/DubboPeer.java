package peer;

import com.alibaba.fastjson2.JSON;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.retry.RetryOneTime;
import org.apache.dubbo.common.URL;
import org.apache.dubbo.config.ApplicationConfig;
import org.apache.dubbo.config.ReferenceConfig;
import org.apache.dubbo.config.RegistryConfig;
import org.apache.dubbo.config.bootstrap.DubboBootstrap;
import org.apache.dubbo.registry.client.migration.MigrationInvoker;
import org.apache.dubbo.rpc.Invocation;
import org.apache.dubbo.rpc.Invoker;
import org.apache.dubbo.rpc.Result;
import org.apache.dubbo.rpc.RpcException;
import org.apache.dubbo.rpc.RpcInvocation;
import org.apache.dubbo.rpc.cluster.ClusterInvoker;
import org.apache.dubbo.rpc.cluster.Directory;
import org.apache.dubbo.rpc.cluster.loadbalance.RandomLoadBalance;
import org.apache.dubbo.rpc.service.GenericService;

/**
 * A Dubbo consumer as a user would write one, subscribed through Dubbo's own ZooKeeper registry to
 * SERVICE, reporting what Dubbo's registry directory holds and the weights Dubbo's own random load
 * balancer gives its invokers.
 *
 * <p>Arguments: {@code --registry zookeeper://HOST:PORT --service NAME [--interval-ms 200]
 * [--picks 0]}. Stdout, one JSON object a line:
 *
 * <ul>
 *   <li>{@code {"event":"ready","t":MS,"directory":CLASS}} once the reference is made;
 *   <li>{@code {"event":"providers","t":MS,"providers":[{"address":"host:port","protocol":P,
 *       "params":{...}}]}} whenever the directory's invokers change (checked every 5 ms): params
 *       are the URL parameters Dubbo keeps for the invoker;
 *   <li>{@code {"event":"weights","t":MS,"weights":{address:w},"picks":{address:share},
 *       "published":{address:w}}} every interval: w from {@code AbstractLoadBalance.getWeight}
 *       (Dubbo's warmup included) for the directory's invokers; picks the share of
 *       {@code RandomLoadBalance.select} over them (with --picks N); published the same
 *       getWeight for invokers of the provider URLs exactly as they stand in ZooKeeper (read with
 *       Curator, parsed with Dubbo's {@code URL.valueOf}): what Dubbo's formula makes of the
 *       published parameters, {@code timestamp} included, which Dubbo 3.3's ZooKeeper registry
 *       strips before its directory sees them.
 * </ul>
 *
 * <p>The reference is generic (no Java interface needed) and lazy (Dubbo connects to a provider
 * at the first call only; this peer makes none: the sidecars speak HTTP, not Dubbo's protocol).
 */
public final class DubboPeer {

    /** Dubbo's RandomLoadBalance, with its protected getWeight made callable. */
    static final class Balancer extends RandomLoadBalance {
        int weight(Invoker<?> invoker, Invocation invocation) {
            return getWeight(invoker, invocation);
        }
    }

    /** An invoker that is only a URL: enough for getWeight, never invoked. */
    record UrlInvoker(URL url) implements Invoker<Object> {
        @Override
        public Class<Object> getInterface() {
            return Object.class;
        }

        @Override
        public Result invoke(Invocation invocation) throws RpcException {
            throw new RpcException("not callable");
        }

        @Override
        public URL getUrl() {
            return url;
        }

        @Override
        public boolean isAvailable() {
            return true;
        }

        @Override
        public void destroy() {}
    }

    private DubboPeer() {}

    public static void main(String[] argv) throws Exception {
        Map<String, String> args = new LinkedHashMap<>();
        for (int i = 0; i + 1 < argv.length; i += 2) {
            args.put(argv[i], argv[i + 1]);
        }
        String registry = require(args, "--registry");
        String service = require(args, "--service");
        long intervalMs = Long.parseLong(args.getOrDefault("--interval-ms", "200"));
        int picks = Integer.parseInt(args.getOrDefault("--picks", "0"));

        ApplicationConfig application = new ApplicationConfig("graceful-sidecar-interop-consumer");
        application.setQosEnable(false); // no telnet port: several peers may run side by side
        ReferenceConfig<GenericService> reference = new ReferenceConfig<>();
        reference.setInterface(service);
        reference.setGeneric("true");
        reference.setCheck(false); // start before any provider exists
        reference.setLazy(true);
        DubboBootstrap bootstrap = DubboBootstrap.getInstance()
                .application(application)
                .registry(new RegistryConfig(registry))
                .reference(reference);
        bootstrap.start();
        reference.get();
        Directory<?> directory = directoryOf(reference.getInvoker());
        Runtime.getRuntime().addShutdownHook(new Thread(bootstrap::stop));
        emit(event("ready", "directory", directory.getClass().getName()));

        URL registryUrl = URL.valueOf(registry);
        CuratorFramework zookeeper =
                CuratorFrameworkFactory.newClient(registryUrl.getAddress(), new RetryOneTime(100));
        zookeeper.start();
        String providersPath = "/dubbo/" + URL.encode(service) + "/providers";

        Balancer balancer = new Balancer();
        Invocation invocation = new RpcInvocation(null, "work", service, service, new Class<?>[0], new Object[0]);
        List<Map<String, Object>> last = null;
        long nextWeights = 0;
        while (true) {
            List<Invoker<?>> invokers = new ArrayList<>(directory.getAllInvokers());
            List<Map<String, Object>> providers = describe(invokers);
            if (!providers.equals(last)) {
                last = providers;
                emit(event("providers", "providers", providers));
            }
            long now = System.currentTimeMillis();
            if (now >= nextWeights) {
                nextWeights = now + intervalMs;
                Map<String, Object> event =
                        weights(balancer, invokers, directory.getConsumerUrl(), invocation, picks);
                event.put("published", published(balancer, zookeeper, providersPath, invocation));
                emit(event);
            }
            Thread.sleep(5);
        }
    }

    /** The interface-level directory: the one that reads /dubbo/SERVICE/providers. */
    static Directory<?> directoryOf(Invoker<?> invoker) {
        if (invoker instanceof MigrationInvoker) {
            ClusterInvoker<?> interfaceLevel = ((MigrationInvoker<?>) invoker).getInvoker();
            if (interfaceLevel != null) {
                return interfaceLevel.getDirectory();
            }
        }
        if (invoker instanceof ClusterInvoker) {
            return ((ClusterInvoker<?>) invoker).getDirectory();
        }
        throw new IllegalStateException("no registry directory behind " + invoker);
    }

    static List<Map<String, Object>> describe(List<Invoker<?>> invokers) {
        List<Map<String, Object>> providers = new ArrayList<>();
        for (Invoker<?> invoker : invokers) {
            URL url = invoker.getUrl();
            Map<String, Object> provider = new LinkedHashMap<>();
            provider.put("address", url.getAddress());
            provider.put("protocol", url.getProtocol());
            provider.put("path", url.getPath());
            provider.put("params", new TreeMap<>(url.getParameters()));
            providers.add(provider);
        }
        providers.sort((a, b) -> ((String) a.get("address")).compareTo((String) b.get("address")));
        return providers;
    }

    @SuppressWarnings({"rawtypes", "unchecked"})
    static Map<String, Object> weights(
            Balancer balancer, List<Invoker<?>> invokers, URL consumer, Invocation invocation, int picks) {
        Map<String, Object> weights = new TreeMap<>();
        for (Invoker<?> invoker : invokers) {
            weights.put(invoker.getUrl().getAddress(), balancer.weight(invoker, invocation));
        }
        Map<String, Object> event = event("weights", "weights", weights);
        if (picks > 0 && !invokers.isEmpty()) {
            Map<String, Integer> counts = new TreeMap<>();
            for (int i = 0; i < picks; i++) {
                Invoker<?> chosen = balancer.select((List) invokers, consumer, invocation);
                counts.merge(chosen.getUrl().getAddress(), 1, Integer::sum);
            }
            Map<String, Object> shares = new TreeMap<>();
            counts.forEach((address, n) -> shares.put(address, (double) n / picks));
            event.put("picks", shares);
        }
        return event;
    }

    /** getWeight over the provider URLs as published: null while the path is missing. */
    static Map<String, Object> published(
            Balancer balancer, CuratorFramework zookeeper, String path, Invocation invocation) {
        Map<String, Object> weights = new TreeMap<>();
        List<String> children;
        try {
            children = zookeeper.getChildren().forPath(path);
        } catch (Exception e) {
            return null;
        }
        for (String child : children) {
            URL url = URL.valueOf(URL.decode(child));
            weights.put(url.getAddress(), balancer.weight(new UrlInvoker(url), invocation));
        }
        return weights;
    }

    static Map<String, Object> event(String kind, String key, Object value) {
        Map<String, Object> event = new LinkedHashMap<>();
        event.put("event", kind);
        event.put("t", System.currentTimeMillis());
        event.put(key, value);
        return event;
    }

    static void emit(Map<String, Object> event) {
        String line = JSON.toJSONString(event);
        synchronized (System.out) {
            System.out.println(line);
            System.out.flush();
        }
    }

    static String require(Map<String, String> args, String name) {
        String value = args.get(name);
        if (value == null) {
            System.err.println("usage: peer --registry zookeeper://HOST:PORT --service NAME [--interval-ms MS] [--picks N]");
            System.exit(2);
        }
        return value;
    }
}
