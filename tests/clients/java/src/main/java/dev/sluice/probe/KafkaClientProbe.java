package dev.sluice.probe;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Comparator;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Properties;
import java.util.TreeMap;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.CommonClientConfigs;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.ConsumerGroupDescription;
import org.apache.kafka.clients.admin.Config;
import org.apache.kafka.clients.admin.ConfigEntry;
import org.apache.kafka.clients.admin.CreateTopicsOptions;
import org.apache.kafka.clients.admin.CreateTopicsResult;
import org.apache.kafka.clients.admin.DescribeClusterResult;
import org.apache.kafka.clients.admin.DescribeConfigsOptions;
import org.apache.kafka.clients.admin.GroupListing;
import org.apache.kafka.clients.admin.ListOffsetsOptions;
import org.apache.kafka.clients.admin.ListOffsetsResult;
import org.apache.kafka.clients.admin.MemberDescription;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.admin.RecordsToDelete;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.consumer.CloseOptions;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.IsolationLevel;
import org.apache.kafka.common.KafkaException;
import org.apache.kafka.common.Node;
import org.apache.kafka.common.TopicCollection;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.TopicPartitionInfo;
import org.apache.kafka.common.Uuid;
import org.apache.kafka.common.config.ConfigResource;
import org.apache.kafka.common.errors.ApiException;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.common.protocol.Errors;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * The Java Kafka client, driven step by step from the command line, for the differential tests.
 *
 * <pre>
 * KafkaClientProbe BOOTSTRAP STEP [key=value ...] [; STEP [key=value ...]] ...
 * </pre>
 *
 * Steps (each method's comment gives its arguments): produce, consume, close (producer and
 * consumer); create-topic, describe-topic, delete-topic, describe-configs, list-offsets,
 * delete-records, group-offsets, alter-group-offsets, describe-group, list-groups, delete-group,
 * describe-cluster (admin client).
 *
 * <p>Steps run in order in one JVM (a JVM start costs a second). Each prints one JSON object per
 * result on stdout, with "step" naming it. An error that Kafka answers or the client raises is
 * printed as "error" (the exception's class name), "code" (Kafka's error name; null for an
 * exception of the client's own) and "message", and the next step runs; so is an exception the
 * client throws outside a future (a consumer's poll, say). Anything else (a bad argument, a step
 * that throws unexpectedly) prints a "fatal" line and exits with status 2. The client's own log
 * goes to stderr (warnings and errors).
 */
public final class KafkaClientProbe {

    private static final Duration WAIT = Duration.ofSeconds(30);

    private final String bootstrap;
    private final Map<String, KafkaConsumer<byte[], byte[]>> openConsumers = new LinkedHashMap<>();
    private final List<KafkaProducer<byte[], byte[]>> openTransactions = new ArrayList<>();
    private Admin admin;

    private KafkaClientProbe(String bootstrap) {
        this.bootstrap = bootstrap;
    }

    public static void main(String[] args) {
        if (args.length < 2) {
            System.err.println("usage: KafkaClientProbe BOOTSTRAP STEP [key=value ...] [; STEP ...]");
            System.exit(64);
        }
        KafkaClientProbe probe = new KafkaClientProbe(args[0]);
        int status = 0;
        String current = "?";
        try {
            for (Step step : Step.parse(args, 1)) {
                current = step.name;
                probe.run(step);
            }
        } catch (Exception | Error e) {
            emit(obj("step", current, "fatal", e.getClass().getName(),
                     "message", String.valueOf(e.getMessage())));
            e.printStackTrace(System.err);
            status = 2;
        } finally {
            probe.close();
        }
        System.out.flush();
        // Client threads (a consumer's heartbeat, the admin's network thread) must not keep the
        // JVM up after the steps.
        System.exit(status);
    }

    private void run(Step step) throws Exception {
        try {
            dispatch(step);
        } catch (KafkaException e) {
            // What the client threw outside a future (a consumer's poll or commit, a producer's
            // send): the step's error, and the next step runs.
            emitError(obj("step", step.name), e);
        }
    }

    private void dispatch(Step step) throws Exception {
        switch (step.name) {
            case "produce" -> produce(step);
            case "consume" -> consume(step);
            case "close" -> closeConsumer(step);
            case "create-topic" -> createTopic(step);
            case "describe-topic" -> describeTopic(step);
            case "list-offsets" -> listOffsets(step);
            case "group-offsets" -> groupOffsets(step);
            case "describe-group" -> describeGroup(step);
            case "list-groups" -> listGroups(step);
            case "delete-group" -> deleteGroup(step);
            case "delete-records" -> deleteRecords(step);
            case "alter-group-offsets" -> alterGroupOffsets(step);
            case "describe-cluster" -> describeCluster(step);
            case "describe-configs" -> describeConfigs(step);
            case "delete-topic" -> deleteTopic(step);
            default -> throw new IllegalArgumentException("unknown step " + step.name);
        }
        step.checkAllUsed();
    }

    // ---- producer ----------------------------------------------------------------------------

    /**
     * produce topic=T count=N [partition=P] [timestamp=FIRST] [timestamp-step=MS] [key-prefix=S]
     * [keys=false] [value-prefix=S] [headers=true] [acks=all] [idempotence=true] [linger-ms=0]
     * [compression=none] [value-size=BYTES] [transactional-id=ID] [end=commit|abort|open]
     * [producer.CONFIG=VALUE ...]
     *
     * Record i has key key-prefix+i, value value-prefix+i, timestamp FIRST + i*MS when timestamp
     * is given (else the producer's clock), and headers index=i, dup=first, dup=second, empty=""
     * and null=(null); value-size pads each value with '.' to that many bytes. Prints one
     * "produce" line per record: its partition, offset and timestamp as the producer's callback
     * saw them. With a transactional id the records are sent in one transaction, which ends as
     * `end` says: end=open leaves it open until the program ends (then it is aborted).
     */
    private void produce(Step step) throws Exception {
        String topic = step.required("topic");
        int count = step.integer("count", 1);
        Integer partition = step.has("partition") ? step.integer("partition", 0) : null;
        Long firstTimestamp = step.has("timestamp") ? step.longValue("timestamp", 0) : null;
        long timestampStep = step.longValue("timestamp-step", 1000);
        boolean keys = step.bool("keys", true);
        String keyPrefix = step.get("key-prefix", "key-");
        String valuePrefix = step.get("value-prefix", "value-");
        boolean headers = step.bool("headers", true);
        String transactionalId = step.get("transactional-id", null);
        String end = step.get("end", "commit");
        int valueSize = step.integer("value-size", 0);

        Properties props = common();
        props.put(ProducerConfig.ACKS_CONFIG, step.get("acks", "all"));
        props.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, step.get("idempotence", "true"));
        props.put(ProducerConfig.LINGER_MS_CONFIG, step.get("linger-ms", "0"));
        props.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, step.get("compression", "none"));
        props.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, "30000");
        props.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, "45000");
        props.put(ProducerConfig.REQUEST_TIMEOUT_MS_CONFIG, "15000");
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        if (transactionalId != null) {
            props.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, transactionalId);
        }
        props.putAll(step.prefixed("producer."));

        KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(props);
        boolean kept = false;
        try {
            if (transactionalId != null) {
                try {
                    producer.initTransactions();
                    producer.beginTransaction();
                } catch (Exception e) {
                    emitError(obj("step", "produce", "phase", "begin-transaction"), e);
                    return;
                }
            }
            List<Future<RecordMetadata>> sent = new ArrayList<>();
            for (int i = 0; i < count; i++) {
                RecordHeaders recordHeaders = new RecordHeaders();
                if (headers) {
                    recordHeaders.add("index", utf8(Integer.toString(i)));
                    recordHeaders.add("dup", utf8("first"));
                    recordHeaders.add("dup", utf8("second"));
                    recordHeaders.add("empty", new byte[0]);
                    recordHeaders.add("null", null);
                }
                Long timestamp = firstTimestamp == null ? null : firstTimestamp + i * timestampStep;
                byte[] key = keys ? utf8(keyPrefix + i) : null;
                sent.add(producer.send(new ProducerRecord<>(topic, partition, timestamp, key,
                                                            value(valuePrefix + i, valueSize), recordHeaders)));
            }
            producer.flush();
            for (int i = 0; i < sent.size(); i++) {
                Map<String, Object> line = obj("step", "produce", "index", i);
                try {
                    RecordMetadata metadata = sent.get(i)
                        .get(WAIT.toMillis(), TimeUnit.MILLISECONDS);
                    line.put("topic", metadata.topic());
                    line.put("partition", metadata.partition());
                    line.put("offset", metadata.hasOffset() ? metadata.offset() : null);
                    line.put("timestamp", metadata.hasTimestamp() ? metadata.timestamp() : null);
                    emit(line);
                } catch (ExecutionException e) {
                    emitError(line, e);
                }
            }
            if (transactionalId != null) {
                Map<String, Object> line = obj("step", "produce", "phase", end);
                try {
                    switch (end) {
                        case "commit" -> producer.commitTransaction();
                        case "abort" -> producer.abortTransaction();
                        case "open" -> {
                            openTransactions.add(producer);
                            kept = true;
                        }
                        default -> throw new IllegalArgumentException("end=" + end);
                    }
                    line.put("error", null);
                    emit(line);
                } catch (KafkaException e) {
                    emitError(line, e);
                }
            }
        } finally {
            if (!kept) {
                producer.close(WAIT);
            }
        }
    }

    private static byte[] value(String text, int size) {
        StringBuilder value = new StringBuilder(text);
        while (value.length() < size) {
            value.append('.');
        }
        return utf8(value.toString());
    }

    // ---- consumer ----------------------------------------------------------------------------

    /**
     * consume topic=T[,T2] group=G count=N [timeout-ms=30000] [commit=true] [keep=false]
     * [reset=earliest] [isolation=read_uncommitted] [protocol=classic] [client-id=ID]
     * [consumer.CONFIG=VALUE ...]
     *
     * Subscribes, polls until N records came (or the timeout), prints each as a "record" line,
     * commits the positions with commitSync ("commit" line) and prints a "consume" summary. With
     * keep=true the consumer stays in its group until a "close group=G" step (or the end).
     */
    private void consume(Step step) throws Exception {
        List<String> topics = List.of(step.required("topic").split(","));
        String group = step.required("group");
        int count = step.integer("count", 1);
        long timeoutMs = step.longValue("timeout-ms", 30000);
        boolean commit = step.bool("commit", true);
        boolean keep = step.bool("keep", false);

        Properties props = common();
        props.put(ConsumerConfig.GROUP_ID_CONFIG, group);
        props.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, step.get("reset", "earliest"));
        props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        props.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, step.get("isolation", "read_uncommitted"));
        props.put(ConsumerConfig.GROUP_PROTOCOL_CONFIG, step.get("protocol", "classic"));
        props.put(ConsumerConfig.CLIENT_ID_CONFIG, step.get("client-id", "probe-" + group));
        props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        props.putAll(step.prefixed("consumer."));

        KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(props);
        boolean kept = false;
        try {
            consumer.subscribe(topics);
            long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMs);
            int got = 0;
            while (got < count && System.nanoTime() < deadline) {
                ConsumerRecords<byte[], byte[]> records = consumer.poll(Duration.ofMillis(200));
                for (ConsumerRecord<byte[], byte[]> record : records) {
                    emit(recordLine(record));
                    got++;
                }
            }
            if (count == 0) {
                // Nothing to wait for but the group: poll until it assigned us something.
                while (consumer.assignment().isEmpty() && System.nanoTime() < deadline) {
                    consumer.poll(Duration.ofMillis(200));
                }
            }
            if (commit) {
                List<Object> positions = new ArrayList<>();
                for (TopicPartition tp : sorted(consumer.assignment())) {
                    positions.add(obj("topic", tp.topic(), "partition", tp.partition(),
                                      "offset", consumer.position(tp, WAIT)));
                }
                Map<String, Object> line = obj("step", "commit", "group", group, "positions", positions);
                try {
                    consumer.commitSync(WAIT);
                    emit(line);
                } catch (Exception e) {
                    emitError(line, e);
                }
            }
            emit(obj("step", "consume", "group", group, "records", got, "timed_out", got < count,
                     "assignment", partitions(consumer.assignment())));
            if (keep) {
                KafkaConsumer<byte[], byte[]> previous = openConsumers.put(group, consumer);
                if (previous != null) {
                    previous.close(CloseOptions.timeout(WAIT));
                }
                kept = true;
            }
        } finally {
            if (!kept) {
                consumer.close(CloseOptions.timeout(WAIT));
            }
        }
    }

    /** close group=G: the consumer a consume step kept (if it did) leaves its group. */
    private void closeConsumer(Step step) {
        String group = step.required("group");
        KafkaConsumer<byte[], byte[]> consumer = openConsumers.remove(group);
        if (consumer != null) {
            consumer.close(CloseOptions.timeout(WAIT));
        }
        // was_open is false when the consume step failed before it could keep its consumer.
        emit(obj("step", "close", "group", group, "was_open", consumer != null));
    }

    private static Map<String, Object> recordLine(ConsumerRecord<byte[], byte[]> record) {
        List<Object> headers = new ArrayList<>();
        for (Header header : record.headers()) {
            headers.add(List.of(header.key(), header.value() == null ? NULL : string(header.value())));
        }
        return obj("step", "record", "topic", record.topic(), "partition", record.partition(),
                   "offset", record.offset(), "timestamp", record.timestamp(),
                   "timestamp_type", record.timestampType().name(),
                   "key", string(record.key()), "value", string(record.value()),
                   "headers", headers,
                   "leader_epoch", record.leaderEpoch().orElse(null));
    }

    // ---- admin -------------------------------------------------------------------------------

    /**
     * create-topic name=T [partitions=N] [replication=R] [validate-only=false] [config.KEY=VALUE ...]
     * Prints the topic's partitions, replication factor and id as CreateTopics answered them, or
     * the error.
     */
    private void createTopic(Step step) throws Exception {
        String name = step.required("name");
        Optional<Integer> partitions = step.has("partitions")
            ? Optional.of(step.integer("partitions", 0)) : Optional.empty();
        Optional<Short> replication = step.has("replication")
            ? Optional.of((short) step.integer("replication", 0)) : Optional.empty();
        NewTopic topic = new NewTopic(name, partitions, replication).configs(step.prefixed("config."));
        CreateTopicsOptions options = new CreateTopicsOptions()
            .validateOnly(step.bool("validate-only", false));
        CreateTopicsResult result = admin().createTopics(List.of(topic), options);
        Map<String, Object> line = obj("step", "create-topic", "topic", name);
        try {
            result.all().get(WAIT.toMillis(), TimeUnit.MILLISECONDS);
            line.put("error", null);
            line.put("partitions", result.numPartitions(name).get());
            line.put("replication", (int) result.replicationFactor(name).get());
            line.put("topic_id", result.topicId(name).get().toString());
            emit(line);
        } catch (ExecutionException e) {
            emitError(line, e);
        }
    }

    /**
     * describe-topic topic=T | id=TOPIC_ID | id-of=T: its name, id, partitions, leaders, replicas
     * and ISR (or the error), asked by name or by topic id.
     */
    private void describeTopic(Step step) throws Exception {
        String id = idOf(step);
        String topic = id == null ? step.required("topic") : null;
        Map<String, Object> line = obj("step", "describe-topic", "topic", topic);
        if (id != null) {
            line.put("id", id);
        }
        try {
            TopicDescription description;
            if (id == null) {
                description = admin().describeTopics(List.of(topic)).allTopicNames()
                    .get(WAIT.toMillis(), TimeUnit.MILLISECONDS).get(topic);
            } else {
                Uuid uuid = Uuid.fromString(id);
                description = admin().describeTopics(TopicCollection.ofTopicIds(List.of(uuid)))
                    .allTopicIds().get(WAIT.toMillis(), TimeUnit.MILLISECONDS).get(uuid);
                line.put("topic", description.name());
            }
            List<Object> partitions = new ArrayList<>();
            for (TopicPartitionInfo info : description.partitions()) {
                partitions.add(obj("partition", info.partition(),
                                   "leader", info.leader() == null ? null : info.leader().id(),
                                   "replicas", nodeIds(info.replicas()), "isr", nodeIds(info.isr())));
            }
            line.put("error", null);
            line.put("internal", description.isInternal());
            line.put("topic_id", description.topicId().toString());
            line.put("partitions", partitions);
            emit(line);
        } catch (ExecutionException e) {
            emitError(line, e);
        }
    }

    /**
     * list-offsets topic=T [partitions=0,1] spec=earliest|latest|max-timestamp|earliest-local|TIMESTAMP
     * [isolation=read_uncommitted|read_committed]
     * One line per partition: the offset, timestamp and leader epoch ListOffsets answered.
     */
    private void listOffsets(Step step) throws Exception {
        String topic = step.required("topic");
        String specName = step.required("spec");
        OffsetSpec spec = switch (specName) {
            case "earliest" -> OffsetSpec.earliest();
            case "latest" -> OffsetSpec.latest();
            case "max-timestamp" -> OffsetSpec.maxTimestamp();
            case "earliest-local" -> OffsetSpec.earliestLocal();
            default -> OffsetSpec.forTimestamp(Long.parseLong(specName));
        };
        Map<TopicPartition, OffsetSpec> request = new LinkedHashMap<>();
        for (String partition : step.get("partitions", "0").split(",")) {
            request.put(new TopicPartition(topic, Integer.parseInt(partition)), spec);
        }
        IsolationLevel isolation = IsolationLevel.valueOf(
            step.get("isolation", "read_uncommitted").toUpperCase(java.util.Locale.ROOT));
        ListOffsetsResult result = admin().listOffsets(request, new ListOffsetsOptions(isolation));
        for (TopicPartition tp : request.keySet()) {
            Map<String, Object> line = obj("step", "list-offsets", "topic", topic,
                                           "partition", tp.partition(), "spec", specName);
            try {
                ListOffsetsResult.ListOffsetsResultInfo info = result.partitionResult(tp)
                    .get(WAIT.toMillis(), TimeUnit.MILLISECONDS);
                line.put("error", null);
                line.put("offset", info.offset());
                line.put("timestamp", info.timestamp());
                line.put("leader_epoch", info.leaderEpoch().orElse(null));
                emit(line);
            } catch (ExecutionException e) {
                emitError(line, e);
            }
        }
    }

    /** group-offsets group=G: listConsumerGroupOffsets, one entry per partition. */
    private void groupOffsets(Step step) throws Exception {
        String group = step.required("group");
        Map<String, Object> line = obj("step", "group-offsets", "group", group);
        try {
            Map<TopicPartition, OffsetAndMetadata> offsets = admin().listConsumerGroupOffsets(group)
                .partitionsToOffsetAndMetadata().get(WAIT.toMillis(), TimeUnit.MILLISECONDS);
            List<Object> entries = new ArrayList<>();
            for (TopicPartition tp : sorted(offsets.keySet())) {
                OffsetAndMetadata offset = offsets.get(tp);
                entries.add(obj("topic", tp.topic(), "partition", tp.partition(),
                                "offset", offset == null ? null : offset.offset(),
                                "metadata", offset == null ? null : offset.metadata(),
                                "leader_epoch", offset == null ? null : offset.leaderEpoch().orElse(null)));
            }
            line.put("error", null);
            line.put("offsets", entries);
            emit(line);
        } catch (ExecutionException e) {
            emitError(line, e);
        }
    }

    /** describe-group group=G: describeConsumerGroups' state, type, assignor and members. */
    private void describeGroup(Step step) throws Exception {
        String group = step.required("group");
        Map<String, Object> line = obj("step", "describe-group", "group", group);
        try {
            ConsumerGroupDescription description = admin().describeConsumerGroups(List.of(group))
                .describedGroups().get(group).get(WAIT.toMillis(), TimeUnit.MILLISECONDS);
            List<Object> members = new ArrayList<>();
            for (MemberDescription member : description.members()) {
                members.add(obj("member_id", member.consumerId(),
                                "group_instance_id", member.groupInstanceId().orElse(null),
                                "client_id", member.clientId(), "host", member.host(),
                                "assignment", partitions(member.assignment().topicPartitions())));
            }
            line.put("error", null);
            line.put("state", description.groupState().toString());
            line.put("type", description.type().toString());
            line.put("simple", description.isSimpleConsumerGroup());
            line.put("assignor", description.partitionAssignor());
            Node coordinator = description.coordinator();
            line.put("coordinator", coordinator == null ? null : coordinator.id());
            line.put("members", members);
            emit(line);
        } catch (ExecutionException e) {
            emitError(line, e);
        }
    }

    /** list-groups [group=G]: listGroups, every group (or the one named) with type and state. */
    private void listGroups(Step step) throws Exception {
        String only = step.get("group", null);
        Map<String, Object> line = obj("step", "list-groups");
        try {
            Collection<GroupListing> listings = admin().listGroups().all()
                .get(WAIT.toMillis(), TimeUnit.MILLISECONDS);
            List<Object> groups = new ArrayList<>();
            for (GroupListing listing : listings) {
                if (only != null && !only.equals(listing.groupId())) {
                    continue;
                }
                groups.add(obj("group", listing.groupId(), "protocol", listing.protocol(),
                               "type", listing.type().map(Object::toString).orElse(null),
                               "state", listing.groupState().map(Object::toString).orElse(null)));
            }
            line.put("error", null);
            line.put("groups", groups);
            emit(line);
        } catch (ExecutionException e) {
            emitError(line, e);
        }
    }

    /** delete-group group=G: deleteConsumerGroups (or the error, e.g. for a group with members). */
    private void deleteGroup(Step step) throws Exception {
        String group = step.required("group");
        Map<String, Object> line = obj("step", "delete-group", "group", group);
        try {
            admin().deleteConsumerGroups(List.of(group)).all()
                .get(WAIT.toMillis(), TimeUnit.MILLISECONDS);
            line.put("error", null);
            emit(line);
        } catch (ExecutionException e) {
            emitError(line, e);
        }
    }

    /** delete-records topic=T partition=P before=OFFSET: the low watermark DeleteRecords answered. */
    private void deleteRecords(Step step) throws Exception {
        String topic = step.required("topic");
        TopicPartition tp = new TopicPartition(topic, step.integer("partition", 0));
        long before = step.longValue("before", -1);
        Map<String, Object> line = obj("step", "delete-records", "topic", topic,
                                       "partition", tp.partition(), "before", before);
        try {
            long low = admin().deleteRecords(Map.of(tp, RecordsToDelete.beforeOffset(before)))
                .lowWatermarks().get(tp).get(WAIT.toMillis(), TimeUnit.MILLISECONDS).lowWatermark();
            line.put("error", null);
            line.put("low_watermark", low);
            emit(line);
        } catch (ExecutionException e) {
            emitError(line, e);
        }
    }

    /**
     * alter-group-offsets group=G topic=T [partition=0] offset=O [metadata=S]: alterConsumerGroupOffsets
     * for one partition (the group must have no members).
     */
    private void alterGroupOffsets(Step step) throws Exception {
        String group = step.required("group");
        TopicPartition tp = new TopicPartition(step.required("topic"), step.integer("partition", 0));
        OffsetAndMetadata offset = new OffsetAndMetadata(step.longValue("offset", 0),
                                                         step.get("metadata", ""));
        Map<String, Object> line = obj("step", "alter-group-offsets", "group", group,
                                       "partition", tp.partition(), "offset", offset.offset());
        try {
            admin().alterConsumerGroupOffsets(group, Map.of(tp, offset)).all()
                .get(WAIT.toMillis(), TimeUnit.MILLISECONDS);
            line.put("error", null);
            emit(line);
        } catch (ExecutionException e) {
            emitError(line, e);
        }
    }

    /**
     * The topic id a step names: id=TOPIC_ID, or id-of=T for the id of topic T (looked up by
     * name first); null when the step names its topic by name.
     */
    private String idOf(Step step) throws Exception {
        String of = step.get("id-of", null);
        if (of == null) {
            return step.get("id", null);
        }
        return admin().describeTopics(List.of(of)).allTopicNames()
            .get(WAIT.toMillis(), TimeUnit.MILLISECONDS).get(of).topicId().toString();
    }

    /**
     * describe-configs topic=T [keys=a,b]: each config entry (or only those named) with its
     * value, source, default/read-only/sensitive flags, type and whether it has documentation.
     */
    private void describeConfigs(Step step) throws Exception {
        String topic = step.required("topic");
        String keys = step.get("keys", null);
        List<String> only = keys == null ? null : List.of(keys.split(","));
        ConfigResource resource = new ConfigResource(ConfigResource.Type.TOPIC, topic);
        Map<String, Object> line = obj("step", "describe-configs", "topic", topic);
        try {
            Config config = admin().describeConfigs(List.of(resource),
                    new DescribeConfigsOptions().includeSynonyms(true).includeDocumentation(true))
                .all().get(WAIT.toMillis(), TimeUnit.MILLISECONDS).get(resource);
            Map<String, Object> entries = new TreeMap<>();
            for (ConfigEntry entry : config.entries()) {
                if (only != null && !only.contains(entry.name())) {
                    continue;
                }
                List<Object> synonyms = new ArrayList<>();
                for (ConfigEntry.ConfigSynonym synonym : entry.synonyms()) {
                    synonyms.add(List.of(synonym.name(), synonym.source().name()));
                }
                entries.put(entry.name(), obj("value", entry.value(), "source", entry.source().name(),
                                              "default", entry.isDefault(), "read_only", entry.isReadOnly(),
                                              "sensitive", entry.isSensitive(), "type", entry.type().name(),
                                              "documented", entry.documentation() != null
                                                  && !entry.documentation().isEmpty(),
                                              "synonyms", synonyms));
            }
            line.put("error", null);
            line.put("entries", entries);
            emit(line);
        } catch (ExecutionException e) {
            emitError(line, e);
        }
    }

    /** delete-topic topic=T | id=TOPIC_ID | id-of=T: deleteTopics by name or by topic id. */
    private void deleteTopic(Step step) throws Exception {
        String id = idOf(step);
        String topic = id == null ? step.required("topic") : null;
        Map<String, Object> line = obj("step", "delete-topic", "topic", topic, "id", id);
        try {
            TopicCollection topics = id == null ? TopicCollection.ofTopicNames(List.of(topic))
                : TopicCollection.ofTopicIds(List.of(Uuid.fromString(id)));
            admin().deleteTopics(topics).all().get(WAIT.toMillis(), TimeUnit.MILLISECONDS);
            line.put("error", null);
            emit(line);
        } catch (ExecutionException e) {
            emitError(line, e);
        }
    }

    /** describe-cluster: the cluster id, controller and brokers describeCluster answered. */
    private void describeCluster(Step step) throws Exception {
        Map<String, Object> line = obj("step", "describe-cluster");
        try {
            DescribeClusterResult result = admin().describeCluster();
            List<Object> nodes = new ArrayList<>();
            for (Node node : result.nodes().get(WAIT.toMillis(), TimeUnit.MILLISECONDS)) {
                nodes.add(obj("id", node.id(), "host", node.host(), "port", node.port(), "rack", node.rack()));
            }
            Node controller = result.controller().get(WAIT.toMillis(), TimeUnit.MILLISECONDS);
            line.put("error", null);
            line.put("cluster_id", result.clusterId().get(WAIT.toMillis(), TimeUnit.MILLISECONDS));
            line.put("controller", controller == null ? null : controller.id());
            line.put("nodes", nodes);
            emit(line);
        } catch (ExecutionException e) {
            emitError(line, e);
        }
    }

    // ---- plumbing ----------------------------------------------------------------------------

    private Properties common() {
        Properties props = new Properties();
        props.put(CommonClientConfigs.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        return props;
    }

    private Admin admin() {
        if (admin == null) {
            Properties props = common();
            props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "15000");
            props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "30000");
            admin = Admin.create(props);
        }
        return admin;
    }

    private void close() {
        for (KafkaConsumer<byte[], byte[]> consumer : openConsumers.values()) {
            try {
                consumer.close(CloseOptions.timeout(WAIT));
            } catch (RuntimeException e) {
                e.printStackTrace(System.err);
            }
        }
        openConsumers.clear();
        for (KafkaProducer<byte[], byte[]> producer : openTransactions) {
            try {
                producer.abortTransaction();
                producer.close(WAIT);
            } catch (RuntimeException e) {
                e.printStackTrace(System.err);
            }
        }
        openTransactions.clear();
        if (admin != null) {
            admin.close(WAIT);
        }
    }

    /** Adds the error of `failure` (an ExecutionException's cause, if it is one) to `line`. */
    private static void emitError(Map<String, Object> line, Throwable failure) {
        Throwable cause = failure instanceof ExecutionException && failure.getCause() != null
            ? failure.getCause() : failure;
        line.put("error", cause.getClass().getSimpleName());
        // Kafka's error name for what a broker can answer; null for a client-side exception.
        line.put("code", cause instanceof ApiException ? Errors.forException(cause).name() : null);
        line.put("message", String.valueOf(cause.getMessage()));
        emit(line);
    }

    private static List<Object> partitions(Collection<TopicPartition> tps) {
        List<Object> out = new ArrayList<>();
        for (TopicPartition tp : sorted(tps)) {
            out.add(List.of(tp.topic(), tp.partition()));
        }
        return out;
    }

    private static List<TopicPartition> sorted(Collection<TopicPartition> tps) {
        List<TopicPartition> out = new ArrayList<>(tps);
        out.sort(Comparator.comparing(TopicPartition::topic).thenComparingInt(TopicPartition::partition));
        return out;
    }

    private static List<Object> nodeIds(List<Node> nodes) {
        List<Object> ids = new ArrayList<>();
        for (Node node : nodes) {
            ids.add(node.id());
        }
        return ids;
    }

    private static byte[] utf8(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    private static Object string(byte[] bytes) {
        return bytes == null ? null : new String(bytes, StandardCharsets.UTF_8);
    }

    // ---- JSON out ----------------------------------------------------------------------------

    /** JSON null where List.of (which takes no nulls) needs an element. */
    private static final Object NULL = new Object();

    private static Map<String, Object> obj(Object... keysAndValues) {
        Map<String, Object> map = new LinkedHashMap<>();
        for (int i = 0; i < keysAndValues.length; i += 2) {
            map.put((String) keysAndValues[i], keysAndValues[i + 1]);
        }
        return map;
    }

    private static void emit(Map<String, Object> line) {
        StringBuilder out = new StringBuilder();
        writeJson(out, line);
        System.out.println(out);
        System.out.flush();
    }

    private static void writeJson(StringBuilder out, Object value) {
        if (value == null || value == NULL) {
            out.append("null");
        } else if (value instanceof String s) {
            writeString(out, s);
        } else if (value instanceof Number || value instanceof Boolean) {
            out.append(value);
        } else if (value instanceof Map<?, ?> map) {
            out.append('{');
            boolean first = true;
            for (Map.Entry<?, ?> entry : map.entrySet()) {
                if (!first) {
                    out.append(',');
                }
                first = false;
                writeString(out, String.valueOf(entry.getKey()));
                out.append(':');
                writeJson(out, entry.getValue());
            }
            out.append('}');
        } else if (value instanceof Collection<?> items) {
            out.append('[');
            boolean first = true;
            for (Object item : items) {
                if (!first) {
                    out.append(',');
                }
                first = false;
                writeJson(out, item);
            }
            out.append(']');
        } else {
            writeString(out, value.toString());
        }
    }

    private static void writeString(StringBuilder out, String s) {
        out.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"' -> out.append("\\\"");
                case '\\' -> out.append("\\\\");
                case '\n' -> out.append("\\n");
                case '\r' -> out.append("\\r");
                case '\t' -> out.append("\\t");
                default -> {
                    if (c < 0x20) {
                        out.append(String.format("\\u%04x", (int) c));
                    } else {
                        out.append(c);
                    }
                }
            }
        }
        out.append('"');
    }

    // ---- arguments ---------------------------------------------------------------------------

    /** One step of the command line: its name and key=value arguments, each to be used once. */
    private static final class Step {
        final String name;
        final Map<String, String> args = new TreeMap<>();
        final Map<String, Boolean> used = new HashMap<>();

        Step(String name) {
            this.name = name;
        }

        static List<Step> parse(String[] argv, int from) {
            List<Step> steps = new ArrayList<>();
            Step current = null;
            for (int i = from; i < argv.length; i++) {
                String arg = argv[i];
                if (arg.equals(";")) {
                    current = null;
                } else if (current == null) {
                    current = new Step(arg);
                    steps.add(current);
                } else {
                    int eq = arg.indexOf('=');
                    if (eq <= 0) {
                        throw new IllegalArgumentException(current.name + ": expected key=value, got " + arg);
                    }
                    current.args.put(arg.substring(0, eq), arg.substring(eq + 1));
                }
            }
            return steps;
        }

        boolean has(String key) {
            return args.containsKey(key);
        }

        String get(String key, String otherwise) {
            used.put(key, true);
            return args.getOrDefault(key, otherwise);
        }

        String required(String key) {
            String value = get(key, null);
            if (value == null) {
                throw new IllegalArgumentException(name + ": " + key + "= is required");
            }
            return value;
        }

        int integer(String key, int otherwise) {
            return Integer.parseInt(get(key, Integer.toString(otherwise)));
        }

        long longValue(String key, long otherwise) {
            return Long.parseLong(get(key, Long.toString(otherwise)));
        }

        boolean bool(String key, boolean otherwise) {
            String value = get(key, Boolean.toString(otherwise));
            if (!value.equals("true") && !value.equals("false")) {
                throw new IllegalArgumentException(name + ": " + key + "= takes true or false");
            }
            return Boolean.parseBoolean(value);
        }

        Map<String, String> prefixed(String prefix) {
            Map<String, String> out = new LinkedHashMap<>();
            for (Map.Entry<String, String> entry : args.entrySet()) {
                if (entry.getKey().startsWith(prefix)) {
                    used.put(entry.getKey(), true);
                    out.put(entry.getKey().substring(prefix.length()), entry.getValue());
                }
            }
            return out;
        }

        void checkAllUsed() {
            for (String key : args.keySet()) {
                if (!used.containsKey(key)) {
                    throw new IllegalArgumentException(name + ": unknown argument " + key + "=");
                }
            }
        }
    }
}
