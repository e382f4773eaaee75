package sidecar.interop.nacos;

import com.alibaba.nacos.NacosServerBasicApplication;
import com.alibaba.nacos.NacosServerWebApplication;
import com.alibaba.nacos.core.listener.startup.NacosStartUp;
import com.alibaba.nacos.core.listener.startup.NacosStartUpManager;
import com.alibaba.nacos.sys.env.DeploymentType;
import com.alibaba.nacos.sys.env.EnvUtil;
import org.springframework.boot.WebApplicationType;
import org.springframework.boot.builder.SpringApplicationBuilder;
import org.springframework.context.ConfigurableApplicationContext;

/**
 * A standalone Nacos 3.1 server (naming and config open APIs, gRPC; no console), started the way
 * Nacos's own nacos-bootstrap module (NacosBootstrap, not published to Maven Central) starts the
 * "server" deployment: a core context without web, then the server's web context as its child.
 * Prints one {"event":"ready"} line on stdout once both are up.
 */
public final class NacosStandalone {
    private NacosStandalone() {}

    public static void main(String[] args) {
        long start = System.nanoTime();
        EnvUtil.setDeploymentType(DeploymentType.SERVER);
        NacosStartUpManager.start(NacosStartUp.CORE_START_UP_PHASE);
        ConfigurableApplicationContext core = new SpringApplicationBuilder(NacosServerBasicApplication.class)
                .web(WebApplicationType.NONE)
                .run(args);
        NacosStartUpManager.start(NacosStartUp.WEB_START_UP_PHASE);
        new SpringApplicationBuilder(NacosServerWebApplication.class).parent(core).run(args);
        System.out.printf("{\"event\":\"ready\",\"ms\":%d}%n", (System.nanoTime() - start) / 1_000_000);
        System.out.flush();
    }
}
