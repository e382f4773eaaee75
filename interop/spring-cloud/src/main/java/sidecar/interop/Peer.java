package sidecar.interop;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.beans.factory.annotation.Value;
import org.springframework.boot.ApplicationArguments;
import org.springframework.boot.ApplicationRunner;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.cloud.client.ServiceInstance;
import org.springframework.cloud.client.discovery.DiscoveryClient;
import org.springframework.cloud.client.loadbalancer.LoadBalanced;
import org.springframework.context.ApplicationListener;
import org.springframework.context.annotation.Bean;
import org.springframework.context.event.ContextClosedEvent;
import org.springframework.web.client.ResourceAccessException;
import org.springframework.web.client.RestClient;

/**
 * A Spring Cloud consumer as a user writes one: a {@code @LoadBalanced RestClient.Builder}
 * (Spring Cloud LoadBalancer over the DiscoveryClient of the registry enabled) and the
 * DiscoveryClient itself. It reports on stdout, one JSON object per line:
 *
 * <ul>
 *   <li>{@code --peer.mode=call}: {@code peer.callers} threads call
 *       {@code http://SERVICE/work?ms=5} back to back, for {@code peer.seconds} (0: until
 *       SIGTERM); one {@code call} event per call: {@code t} (epoch ms the call began),
 *       {@code instance} (the answer's, or null), {@code status} (or null), {@code error}
 *       (exception class and message, "HTTP n" for another status, or null); {@code ready}
 *       after the first success.
 *   <li>{@code --peer.mode=list}: {@code getInstances(SERVICE)} every 100 ms, an
 *       {@code instances} event whenever the answer changes.
 * </ul>
 */
@SpringBootApplication
public class Peer {

  private static final ObjectMapper JSON = new ObjectMapper();
  private static final Logger LOG = LoggerFactory.getLogger(Peer.class);
  // The stack traces of the first failed calls go to the log (stderr), to tell whose they are.
  private static final AtomicInteger USUAL_TRACES = new AtomicInteger();
  private static final AtomicInteger OTHER_TRACES = new AtomicInteger();
  // Set when the context closes (SIGTERM): calls from then on fail for that reason alone.
  private static volatile boolean stopping;

  public static void main(String[] args) {
    SpringApplication.run(Peer.class, args);
  }

  /** Spring Cloud's documented way to a load-balanced RestClient. */
  @Bean
  @LoadBalanced
  RestClient.Builder loadBalancedRestClientBuilder() {
    return RestClient.builder();
  }

  @Bean
  ApplicationListener<ContextClosedEvent> stopCalling() {
    return event -> stopping = true;
  }

  @Bean
  ApplicationRunner report(
      RestClient.Builder builder,
      DiscoveryClient discovery,
      @Value("${peer.mode:call}") String mode,
      @Value("${peer.service}") String service,
      @Value("${peer.path:/work?ms=5}") String path,
      @Value("${peer.callers:4}") int callers,
      @Value("${peer.seconds:0}") double seconds) {
    return (ApplicationArguments args) -> {
      if (mode.equals("list")) {
        list(discovery, service);
      } else {
        call(builder.build(), "http://" + service + path, callers, seconds);
      }
    };
  }

  static void call(RestClient client, String url, int callers, double seconds)
      throws InterruptedException {
    long until = seconds > 0 ? System.currentTimeMillis() + (long) (seconds * 1000) : Long.MAX_VALUE;
    AtomicBoolean ready = new AtomicBoolean();
    CountDownLatch done = new CountDownLatch(callers);
    for (int n = 0; n < callers; n++) {
      Thread caller =
          new Thread(
              () -> {
                try {
                  while (!stopping && System.currentTimeMillis() < until) {
                    Map<String, Object> event = callOnce(client, url);
                    if (stopping) {
                      break; // cut short by the shutdown, not by the service
                    }
                    if (event.get("status") != null
                        && (int) event.get("status") == 200
                        && ready.compareAndSet(false, true)) {
                      emit(event("ready"));
                    }
                    emit(event);
                  }
                } finally {
                  done.countDown();
                }
              },
              "caller-" + n);
      caller.setDaemon(true); // SIGTERM ends the JVM, callers included
      caller.start();
    }
    done.await();
    emit(event("done"));
  }

  static Map<String, Object> callOnce(RestClient client, String url) {
    Map<String, Object> event = event("call");
    event.put("t", System.currentTimeMillis());
    Object instance = null;
    Integer status = null;
    String error = null;
    try {
      // exchange(): the status as it came, a 5xx not turned into an exception.
      String[] body = new String[1];
      status =
          client
              .get()
              .uri(url)
              .exchange(
                  (request, response) -> {
                    body[0] = new String(response.getBody().readAllBytes());
                    return response.getStatusCode().value();
                  });
      if (status == 200) {
        instance = JSON.readTree(body[0]).path("instance").asText(null);
      } else {
        error = "HTTP " + status;
      }
    } catch (Exception exc) {
      error = exc.getClass().getName() + ": " + exc.getMessage();
      // Refused connections are expected when a list is stale: a few of those, every other kind.
      boolean usual = exc instanceof ResourceAccessException;
      if ((usual ? USUAL_TRACES : OTHER_TRACES).getAndIncrement() < (usual ? 3 : 100)) {
        LOG.warn("call failed", exc);
      }
    }
    event.put("instance", instance);
    event.put("status", status);
    event.put("error", error);
    return event;
  }

  static void list(DiscoveryClient discovery, String service) throws InterruptedException {
    List<Map<String, Object>> last = null;
    String lastError = null;
    while (true) {
      try {
        List<Map<String, Object>> now = instances(discovery.getInstances(service));
        if (!now.equals(last)) {
          Map<String, Object> event = event("instances");
          event.put("t", System.currentTimeMillis());
          event.put("instances", now);
          emit(event);
          last = now;
        }
        lastError = null;
      } catch (RuntimeException exc) {
        String error = exc.getClass().getName() + ": " + exc.getMessage();
        if (!error.equals(lastError)) {
          Map<String, Object> event = event("error");
          event.put("t", System.currentTimeMillis());
          event.put("error", error);
          emit(event);
          lastError = error;
        }
      }
      Thread.sleep(100);
    }
  }

  static List<Map<String, Object>> instances(List<ServiceInstance> found) {
    List<Map<String, Object>> rows = new ArrayList<>();
    for (ServiceInstance instance : found) {
      Map<String, Object> row = new LinkedHashMap<>();
      row.put("id", instance.getInstanceId());
      row.put("host", instance.getHost());
      row.put("port", instance.getPort());
      row.put("metadata", new TreeMap<>(instance.getMetadata()));
      rows.add(row);
    }
    rows.sort(Comparator.comparing(row -> String.valueOf(row.get("id"))));
    return rows;
  }

  static Map<String, Object> event(String kind) {
    Map<String, Object> event = new LinkedHashMap<>();
    event.put("event", kind);
    return event;
  }

  static synchronized void emit(Map<String, Object> event) {
    try {
      System.out.println(JSON.writeValueAsString(event));
    } catch (JsonProcessingException exc) {
      throw new IllegalStateException(exc);
    }
  }
}
