// Reads and writes WeiServing instances with a real Apache Curator client.
//
//   java CuratorInterop CONNECT BASEPATH read SERVICE
//       prints one line per instance: ID<TAB>enabled<TAB>uri<TAB>weight<TAB>state<TAB>models<TAB>json
//   java CuratorInterop CONNECT BASEPATH register SERVICE ID ADDRESS PORT
//       registers an instance with a WeiServing payload, prints REGISTERED,
//       keeps its session until standard input closes, then unregisters.
import java.util.Collection;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.retry.ExponentialBackoffRetry;
import org.apache.curator.x.discovery.ServiceDiscovery;
import org.apache.curator.x.discovery.ServiceDiscoveryBuilder;
import org.apache.curator.x.discovery.ServiceInstance;
import org.apache.curator.x.discovery.UriSpec;
import org.apache.curator.x.discovery.details.JsonInstanceSerializer;

public class CuratorInterop {
    @SuppressWarnings({"unchecked", "rawtypes"})
    public static void main(String[] args) throws Exception {
        String connect = args[0], basePath = args[1], mode = args[2], service = args[3];
        CuratorFramework client = CuratorFrameworkFactory.newClient(
            connect, 10000, 10000, new ExponentialBackoffRetry(100, 5));
        client.start();
        client.blockUntilConnected();
        JsonInstanceSerializer<Map> serializer = new JsonInstanceSerializer<>(Map.class);
        ServiceDiscovery<Map> discovery = ServiceDiscoveryBuilder.builder(Map.class)
            .client(client).basePath(basePath).serializer(serializer).watchInstances(false).build();
        discovery.start();
        if (mode.equals("read")) {
            Collection<ServiceInstance<Map>> instances = discovery.queryForInstances(service);
            for (ServiceInstance<Map> i : instances) {
                Map payload = i.getPayload();
                System.out.println(i.getId() + "\t" + i.isEnabled() + "\t" + i.buildUriSpec() + "\t"
                    + payload.get("weight") + "\t" + payload.get("state") + "\t" + payload.get("models")
                    + "\t" + new String(serializer.serialize(i), "UTF-8"));
            }
        } else if (mode.equals("register")) {
            Map<String, Object> payload = new LinkedHashMap<>();
            payload.put("schema", 1);
            payload.put("weight", 2.5);
            Map<String, Object> capacity = new LinkedHashMap<>();
            capacity.put("cpu_cores", 16.0);
            capacity.put("gpu_model", null);
            capacity.put("gpu_count", 0);
            capacity.put("samples_per_s", 12000.0);
            payload.put("capacity", capacity);
            payload.put("state", "SERVING");
            payload.put("zone", "zone-java");
            payload.put("node", "node-java");
            Map<String, Object> models = new LinkedHashMap<>();
            models.put("ctr", List.of(12, 13));
            payload.put("models", models);
            payload.put("labels", Map.of("lang", "java"));
            payload.put("updated_ms", System.currentTimeMillis());
            ServiceInstance<Map> instance = ServiceInstance.<Map>builder()
                .name(service).id(args[4]).address(args[5]).port(Integer.parseInt(args[6]))
                .payload(payload).uriSpec(new UriSpec("grpc://{address}:{port}")).build();
            discovery.registerService(instance);
            System.out.println("REGISTERED");
            System.out.flush();
            while (System.in.read() != -1) { }
            discovery.unregisterService(instance);
        } else {
            System.err.println("unknown mode " + mode);
            System.exit(2);
        }
        discovery.close();
        client.close();
    }
}
