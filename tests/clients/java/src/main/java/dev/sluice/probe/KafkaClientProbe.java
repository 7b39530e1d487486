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
import java.util.Set;
import java.util.TreeMap;
import java.util.TreeSet;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

import org.apache.kafka.clients.CommonClientConfigs;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.AlterConfigOp;
import org.apache.kafka.clients.admin.AlterConfigsOptions;
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
import org.apache.kafka.clients.admin.ListShareGroupOffsetsSpec;
import org.apache.kafka.clients.admin.MemberDescription;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.admin.RecordsToDelete;
import org.apache.kafka.clients.admin.ShareGroupDescription;
import org.apache.kafka.clients.admin.ShareMemberDescription;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.consumer.AcknowledgeType;
import org.apache.kafka.clients.consumer.CloseOptions;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.KafkaShareConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.IsolationLevel;
import org.apache.kafka.common.KafkaException;
import org.apache.kafka.common.Node;
import org.apache.kafka.common.TopicCollection;
import org.apache.kafka.common.TopicIdPartition;
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
 * KafkaClientProbe [--prop CONFIG=VALUE ...] BOOTSTRAP STEP [key=value ...] [; STEP [key=value ...]] ...
 * </pre>
 *
 * Each --prop goes into every client the steps make (producers, consumers, share consumers and
 * the admin client), before the step's own settings: security.protocol, sasl.mechanism,
 * sasl.jaas.config, ssl.truststore.* and the like.
 *
 * Steps (each method's comment gives its arguments): produce, consume, close (producer and
 * consumer); share-consume, share-consume-parallel, share-wait, share-close (share consumers,
 * KIP-932); halt (the process dies as if killed); create-topic, describe-topic, delete-topic, describe-configs, list-offsets,
 * delete-records, group-offsets, alter-group-offsets, describe-group, list-groups, delete-group,
 * describe-cluster, group-config, describe-group-config, describe-share-group,
 * share-group-offsets, alter-share-group-offsets, delete-share-group-offsets (admin client).
 *
 * <p>Steps run in order in one JVM (a JVM start costs a second); only share-consume steps with
 * background=true (and share-consume-parallel's consumers) poll in threads of their own while
 * the next steps run. Each prints one JSON object per result on stdout, with "step" naming it.
 * An error that Kafka answers or the client raises is printed as "error" (the exception's class
 * name), "code" (Kafka's error name; null for an exception of the client's own) and "message",
 * and the next step runs; so is an exception the client throws outside a future (a consumer's
 * poll, say). Anything else (a bad argument, a step that throws unexpectedly) prints a "fatal"
 * line and exits with status 2. The client's own log goes to stderr (warnings and errors).
 */
public final class KafkaClientProbe {

    private static final Duration WAIT = Duration.ofSeconds(30);

    private final String bootstrap;
    // The --prop settings, for every client.
    private final Properties extra;
    private final Map<String, KafkaConsumer<byte[], byte[]>> openConsumers = new LinkedHashMap<>();
    private final List<KafkaProducer<byte[], byte[]>> openTransactions = new ArrayList<>();
    // Share consumers by label: those polling in threads of their own and those kept open.
    private final Map<String, ShareMember> shareMembers = new ConcurrentHashMap<>();
    // The share-consume steps still polling in the background, by name, until share-wait.
    private final Map<String, List<ShareMember>> shareJobs = new LinkedHashMap<>();
    private static volatile boolean threadFailed;
    private Admin admin;

    private KafkaClientProbe(String bootstrap, Properties extra) {
        this.bootstrap = bootstrap;
        this.extra = extra;
    }

    public static void main(String[] args) {
        Properties extra = new Properties();
        int first = 0;
        while (first + 1 < args.length && args[first].equals("--prop")) {
            String setting = args[first + 1];
            int eq = setting.indexOf('=');
            if (eq <= 0) {
                System.err.println("--prop: expected CONFIG=VALUE, got " + setting);
                System.exit(64);
            }
            extra.put(setting.substring(0, eq), setting.substring(eq + 1));
            first += 2;
        }
        if (args.length - first < 2) {
            System.err.println("usage: KafkaClientProbe [--prop CONFIG=VALUE ...] BOOTSTRAP STEP "
                               + "[key=value ...] [; STEP ...]");
            System.exit(64);
        }
        KafkaClientProbe probe = new KafkaClientProbe(args[first], extra);
        int status = 0;
        String current = "?";
        try {
            for (Step step : Step.parse(args, first + 1)) {
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
        if (threadFailed) {
            status = 2;
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
            case "group-config" -> groupConfig(step);
            case "describe-group-config" -> describeGroupConfig(step);
            case "share-consume" -> shareConsume(step);
            case "share-consume-parallel" -> shareConsumeParallel(step);
            case "share-wait" -> shareWait(step);
            case "share-close" -> shareClose(step);
            case "halt" -> halt(step);
            case "describe-share-group" -> describeShareGroup(step);
            case "share-group-offsets" -> shareGroupOffsets(step);
            case "alter-share-group-offsets" -> alterShareGroupOffsets(step);
            case "delete-share-group-offsets" -> deleteShareGroupOffsets(step);
            default -> throw new IllegalArgumentException("unknown step " + step.name);
        }
        step.checkAllUsed();
    }

    // ---- producer ----------------------------------------------------------------------------

    /**
     * produce topic=T count=N [partition=P] [timestamp=FIRST] [timestamp-step=MS] [key-prefix=S]
     * [keys=false] [value-prefix=S] [headers=true] [acks=all] [idempotence=true] [linger-ms=0]
     * [compression=none] [value-size=BYTES] [transactional-id=ID] [end=commit|abort|open]
     * [interval-ms=0] [until-share=LABEL] [producer.CONFIG=VALUE ...]
     *
     * Record i has key key-prefix+i, value value-prefix+i, timestamp FIRST + i*MS when timestamp
     * is given (else the producer's clock), and headers index=i, dup=first, dup=second, empty=""
     * and null=(null); value-size pads each value with '.' to that many bytes. Prints one
     * "produce" line per record: its partition, offset and timestamp as the producer's callback
     * saw them. With a transactional id the records are sent in one transaction, which ends as
     * `end` says: end=open leaves it open until the program ends (then it is aborted).
     * interval-ms=MS sends the records one at a time, each flushed and MS apart; with
     * until-share=LABEL too, no record is sent once the share consumer LABEL (polling in the
     * background) has been delivered one.
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
        long intervalMs = step.longValue("interval-ms", 0);
        String untilShare = step.get("until-share", null);

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
                if (untilShare != null && shareDeliveries(untilShare) > 0) {
                    break;
                }
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
                if (intervalMs > 0) {
                    producer.flush();
                    Thread.sleep(intervalMs);
                }
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

    // ---- share consumer (KIP-932) -----------------------------------------------------------

    /**
     * share-consume group=G topic=T[,T2] [name=LABEL] [count=1] [mode=implicit|explicit]
     * [acks=SPEC] [default-ack=accept] [commit=MODE==explicit] [settle=false]
     * [timeout-ms=30000] [extra-poll-ms=0] [keep=false] [background=false] [client-id=ID]
     * [consumer.CONFIG=VALUE ...]
     *
     * A KafkaShareConsumer (share.acknowledgement.mode=MODE) of share group G, called LABEL
     * (default G), subscribes to T and polls until N records were delivered (a redelivery counts
     * again) or the timeout, then polls on for extra-poll-ms. Each record delivered is a
     * "share-record" line, in delivery order, with its delivery count.
     *
     * In explicit mode each record is acknowledged as SPEC says: a comma list of
     * [P/]OFFSET[@DELIVERY]:accept|release|reject|none, the record at OFFSET (of partition P, or
     * of any) on its DELIVERY-th delivery (or on any); every other record as default-ack (none:
     * left unacknowledged). The record's line names in "ack" what was done. With commit=true
     * (the default in explicit mode) commitSync follows every poll that delivered records: one
     * "share-commit" line per partition it acknowledged, with its error. In implicit mode a
     * poll's records are acknowledged (ACCEPT) by the next poll, on its ShareFetch, or by
     * commitSync (commit=true); not by the close (KafkaShareConsumer 4.1.1): what the last poll
     * delivered goes back to the group then, so poll on (extra-poll-ms, settle) or commit.
     * The broker's answers to acknowledgements (the AcknowledgementCommitCallback, called in
     * poll, commitSync and close) are "share-acked" lines: partition, offsets and error. With
     * settle=true the consumer polls on after its N records (within the timeout) until every
     * acknowledgement it made was answered so.
     *
     * A "share-consume" line sums up. When a consumer called LABEL is open (an earlier step
     * kept it), that one polls on (group, topic, mode and the configs are its own then). keep=true
     * leaves it open for later steps (share-consume, share-close), else it is closed at the end
     * of the step. background=true polls in a thread of its own while the next steps run, until
     * a "share-wait name=LABEL" step.
     */
    private void shareConsume(Step step) throws Exception {
        String name = step.get("name", null);
        ShareMember member = name == null ? null : shareMembers.get(name);
        if (member == null) {
            String group = step.required("group");
            member = newShareMember(step, name == null ? group : name, group,
                                    step.get("client-id", "probe-" + (name == null ? group : name)));
        } else {
            if (member.thread != null) {
                throw new IllegalArgumentException(step.name + ": " + name + " still polls (share-wait it)");
            }
            step.get("group", null);
            step.get("topic", null);
        }
        runShareMembers(step, member.label, List.of(member));
    }

    /**
     * share-consume-parallel group=G topic=T consumers=K [name=LABEL] [count=1] ... : K share
     * consumers of group G, called LABEL-1 .. LABEL-K (client ids probe-LABEL-1 ...), each polling
     * in a thread of its own until together they got N records (or the timeout). The other
     * arguments are share-consume's; with background=true "share-wait name=LABEL" waits for all.
     */
    private void shareConsumeParallel(Step step) throws Exception {
        String group = step.required("group");
        String name = step.get("name", group);
        int consumers = step.integer("consumers", 2);
        List<ShareMember> members = new ArrayList<>();
        try {
            for (int i = 1; i <= consumers; i++) {
                String label = name + "-" + i;
                members.add(newShareMember(step, label, group, "probe-" + label));
            }
        } catch (RuntimeException e) {
            for (ShareMember member : members) {
                member.consumer.close(WAIT);
            }
            throw e;
        }
        runShareMembers(step, name, members);
    }

    private ShareMember newShareMember(Step step, String label, String group, String clientId) {
        if (shareMembers.containsKey(label)) {
            throw new IllegalArgumentException(step.name + ": a share consumer " + label + " is open");
        }
        List<String> topics = List.of(step.required("topic").split(","));
        String mode = step.get("mode", "implicit");
        Properties props = common();
        props.put(ConsumerConfig.GROUP_ID_CONFIG, group);
        props.put(ConsumerConfig.CLIENT_ID_CONFIG, clientId);
        props.put(ConsumerConfig.SHARE_ACKNOWLEDGEMENT_MODE_CONFIG, mode);
        props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        props.putAll(step.prefixed("consumer."));
        KafkaShareConsumer<byte[], byte[]> consumer = new KafkaShareConsumer<>(props);
        consumer.subscribe(topics);
        return new ShareMember(label, group, consumer, mode.equals("explicit"));
    }

    /** Runs a share-consume step's members: inline (one, not in background) or in threads. */
    private void runShareMembers(Step step, String jobName, List<ShareMember> members)
            throws Exception {
        int count = step.integer("count", 1);
        long timeoutMs = step.longValue("timeout-ms", 30000);
        long extraMs = step.longValue("extra-poll-ms", 0);
        boolean keep = step.bool("keep", false);
        boolean background = step.bool("background", false);
        Map<String, AcknowledgeType> acks = parseAcks(step.get("acks", ""));
        AcknowledgeType defaultAck = ackType(step.get("default-ack", "accept"));
        Boolean commit = step.has("commit") ? step.bool("commit", false) : null;
        boolean settle = step.bool("settle", false);
        if (shareJobs.containsKey(jobName)) {
            throw new IllegalArgumentException(step.name + ": " + jobName + " still runs (share-wait it)");
        }
        for (ShareMember member : members) {
            member.acks = acks;
            member.defaultAck = defaultAck;
            member.commit = commit == null ? member.explicit : commit;
            member.settle = settle;
            shareMembers.put(member.label, member);
        }
        AtomicInteger total = new AtomicInteger();
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMs);
        if (members.size() == 1 && !background) {
            runShareMember(members.get(0), count, total, deadline, extraMs, keep);
            return;
        }
        List<Thread> threads = new ArrayList<>();
        for (ShareMember member : members) {
            Thread thread = new Thread(
                () -> runShareMember(member, count, total, deadline, extraMs, keep),
                "share-" + member.label);
            member.thread = thread;
            threads.add(thread);
        }
        threads.forEach(Thread::start);
        shareJobs.put(jobName, members);
        if (!background) {
            joinShareJob(jobName);
        }
    }

    private void runShareMember(ShareMember member, int count, AtomicInteger total,
                                long deadline, long extraMs, boolean keep) {
        try {
            member.consume(count, total, deadline, extraMs);
            if (!keep) {
                shareMembers.remove(member.label);
                member.consumer.close(WAIT);
            }
        } catch (KafkaException e) {
            emitError(obj("step", "share-consume", "name", member.label, "phase", "close"), e);
        } catch (RuntimeException | Error e) {
            // A step's failure in a thread of its own: the program ends with status 2.
            emit(obj("step", "share-consume", "name", member.label, "fatal", e.getClass().getName(),
                     "message", String.valueOf(e.getMessage())));
            e.printStackTrace(System.err);
            threadFailed = true;
        }
    }

    /** Waits for the threads of a share-consume(-parallel) step; false when one still runs. */
    private boolean joinShareJob(String jobName) throws InterruptedException {
        List<ShareMember> members = shareJobs.get(jobName);
        if (members == null) {
            return true;
        }
        boolean finished = true;
        for (ShareMember member : members) {
            finished &= joinShareMember(member);
        }
        if (finished) {
            shareJobs.remove(jobName);
        }
        return finished;
    }

    private static boolean joinShareMember(ShareMember member) throws InterruptedException {
        Thread thread = member.thread;
        if (thread != null) {
            // Its own timeout, extra polls and close are bounded: this only guards a hang.
            thread.join(TimeUnit.MINUTES.toMillis(3));
            if (thread.isAlive()) {
                return false;
            }
            member.thread = null;
        }
        return true;
    }

    /**
     * share-wait name=LABEL [stop-idle-ms=MS] [stop-after-value=V]: until the share-consume step
     * LABEL (background=true) is done. With stop-idle-ms its consumers stop polling once none of
     * them got a record for MS (counted from now, or from the delivery of a record whose value is
     * V, with stop-after-value), else they poll until their count or timeout.
     */
    private void shareWait(Step step) throws Exception {
        String name = step.required("name");
        long stopIdleMs = step.longValue("stop-idle-ms", -1);
        String stopAfterValue = step.get("stop-after-value", null);
        boolean wasRunning = shareJobs.containsKey(name);
        if (wasRunning && (stopIdleMs >= 0 || stopAfterValue != null)) {
            ShareStop stop = new ShareStop(Math.max(stopIdleMs, 0), stopAfterValue);
            List<ShareMember> members = shareJobs.get(name);
            for (ShareMember member : members) {
                member.stop = stop;
            }
            // A record delivered before the stop was in place: its value is in `values` (and one
            // delivered after is seen by the stop itself).
            for (ShareMember member : members) {
                if (stopAfterValue != null && member.values.contains(stopAfterValue)) {
                    stop.delivered(stopAfterValue);
                }
            }
        }
        boolean finished = joinShareJob(name);
        emit(obj("step", "share-wait", "name", name, "was_running", wasRunning, "finished", finished));
    }

    /**
     * share-close name=LABEL: closes the share consumer that share-consume (keep=true) left open;
     * what it got and did not acknowledge (in implicit mode: what its last poll delivered) goes
     * back to the group. Prints whether it was open and the close's error, if any.
     */
    private void shareClose(Step step) throws Exception {
        String name = step.required("name");
        ShareMember member = shareMembers.get(name);
        Map<String, Object> line = obj("step", "share-close", "name", name, "was_open", member != null);
        if (member != null) {
            if (!joinShareMember(member)) {
                throw new IllegalStateException(name + " still polls");
            }
            shareMembers.remove(name);
            try {
                member.consumer.close(WAIT);
            } catch (KafkaException e) {
                emitError(line, e);
                return;
            }
        }
        line.put("error", null);
        emit(line);
    }

    /**
     * halt: the JVM stops at once, as a killed client would, closing nothing: the operating
     * system closes its sockets, so brokers see the connections drop without a goodbye (no
     * LeaveGroup, no final share session epoch). Prints a "halt" line first; later steps do not
     * run.
     */
    private void halt(Step step) {
        step.checkAllUsed();
        emit(obj("step", "halt"));
        System.out.flush();
        Runtime.getRuntime().halt(0);
    }

    /** Records delivered so far to the share consumer LABEL, or to all of the step LABEL's. */
    private int shareDeliveries(String label) {
        List<ShareMember> members = shareJobs.get(label);
        if (members == null) {
            ShareMember member = shareMembers.get(label);
            if (member == null) {
                throw new IllegalArgumentException("no share consumer " + label);
            }
            members = List.of(member);
        }
        int delivered = 0;
        for (ShareMember member : members) {
            delivered += member.delivered.get();
        }
        return delivered;
    }

    /** [P/]OFFSET[@DELIVERY]:TYPE,... as a map from that key to the acknowledgement. */
    private static Map<String, AcknowledgeType> parseAcks(String spec) {
        Map<String, AcknowledgeType> acks = new HashMap<>();
        for (String item : spec.split(",")) {
            if (item.isEmpty()) {
                continue;
            }
            int colon = item.lastIndexOf(':');
            if (colon <= 0) {
                throw new IllegalArgumentException("acks: expected [P/]OFFSET[@DELIVERY]:TYPE, got " + item);
            }
            acks.put(item.substring(0, colon), ackType(item.substring(colon + 1)));
        }
        return acks;
    }

    /** accept, release or reject; null for none (not acknowledged). */
    private static AcknowledgeType ackType(String name) {
        if (name.equals("none")) {
            return null;
        }
        return AcknowledgeType.valueOf(name.toUpperCase(java.util.Locale.ROOT));
    }

    /**
     * When the consumers of a background share-consume step stop (share-wait): once none got a
     * record for idle nanoseconds, after one got the record of the value awaited (if any).
     */
    private static final class ShareStop {
        final long idleNanos;
        final String value;
        volatile boolean seen;
        volatile long lastNews = System.nanoTime();

        ShareStop(long idleMs, String value) {
            this.idleNanos = TimeUnit.MILLISECONDS.toNanos(idleMs);
            this.value = value;
            this.seen = value == null;
        }

        void delivered(String delivered) {
            if (!seen && value.equals(delivered)) {
                seen = true;
            }
            lastNews = System.nanoTime();
        }

        boolean reached() {
            return seen && System.nanoTime() - lastNews >= idleNanos;
        }
    }

    /** A share consumer the steps drive: its label, client and how it acknowledges. */
    private static final class ShareMember {
        final String label;
        final String group;
        final KafkaShareConsumer<byte[], byte[]> consumer;
        final boolean explicit;
        Map<String, AcknowledgeType> acks = Map.of();
        AcknowledgeType defaultAck = AcknowledgeType.ACCEPT;
        boolean commit;
        volatile Thread thread;
        // Records delivered to it over its life, for produce until-share=LABEL.
        final AtomicInteger delivered = new AtomicInteger();
        boolean settle;
        // Records it acknowledged (in implicit mode: every record delivered), and those of them
        // whose acknowledgement the broker answered (AcknowledgementCommitCallback).
        final AtomicInteger acksMade = new AtomicInteger();
        final AtomicInteger acksAnswered = new AtomicInteger();
        // The values of the records delivered to it, for share-wait stop-after-value.
        final Set<String> values = ConcurrentHashMap.newKeySet();
        // How a share-wait stops it (null: it polls until its count or timeout).
        volatile ShareStop stop;

        ShareMember(String label, String group, KafkaShareConsumer<byte[], byte[]> consumer,
                    boolean explicit) {
            this.label = label;
            this.group = group;
            this.consumer = consumer;
            this.explicit = explicit;
            consumer.setAcknowledgementCommitCallback(this::acknowledged);
        }

        /**
         * The AcknowledgementCommitCallback (called in poll, commitSync or close): a
         * "share-acked" line per partition, with the offsets whose acknowledgements the broker
         * answered and the error, if any.
         */
        private void acknowledged(Map<TopicIdPartition, Set<Long>> offsets, Exception exception) {
            List<TopicIdPartition> partitions = new ArrayList<>(offsets.keySet());
            partitions.sort(Comparator.comparing(TopicIdPartition::topic)
                .thenComparingInt(TopicIdPartition::partition));
            for (TopicIdPartition tip : partitions) {
                List<Long> answered = new ArrayList<>(offsets.get(tip));
                answered.sort(Comparator.naturalOrder());
                Map<String, Object> line = obj("step", "share-acked", "name", label,
                                               "topic", tip.topic(), "partition", tip.partition(),
                                               "offsets", answered);
                if (exception != null) {
                    emitError(line, exception);
                } else {
                    line.put("error", null);
                    emit(line);
                }
                acksAnswered.addAndGet(answered.size());
            }
        }

        /** Polls until `total` reaches `count` (or the deadline), then for extraMs more. */
        void consume(int count, AtomicInteger total, long deadline, long extraMs) {
            int got = 0;
            try {
                while (total.get() < count && System.nanoTime() < deadline && !stopped()) {
                    got += pollOnce(total);
                }
                boolean timedOut = total.get() < count && !stopped();
                while (settle && acksAnswered.get() < acksMade.get() && System.nanoTime() < deadline) {
                    got += pollOnce(total);
                }
                long extraDeadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(extraMs);
                while (System.nanoTime() < extraDeadline) {
                    got += pollOnce(total);
                }
                // (Stopped by share-wait: not a timeout.)
                emit(obj("step", "share-consume", "name", label, "group", group, "records", got,
                         "timed_out", timedOut));
            } catch (KafkaException | IllegalStateException e) {
                // What poll, acknowledge or commitSync threw: the step's error.
                emitError(obj("step", "share-consume", "name", label, "group", group,
                              "records", got), e);
            }
        }

        private boolean stopped() {
            ShareStop current = stop;
            return current != null && current.reached();
        }

        private int pollOnce(AtomicInteger total) {
            ConsumerRecords<byte[], byte[]> records = consumer.poll(Duration.ofMillis(200));
            int got = 0;
            for (ConsumerRecord<byte[], byte[]> record : records) {
                Map<String, Object> line = obj(
                    "step", "share-record", "name", label, "topic", record.topic(),
                    "partition", record.partition(), "offset", record.offset(),
                    "key", string(record.key()), "value", string(record.value()),
                    "delivery_count", record.deliveryCount().map(Object.class::cast).orElse(null));
                if (explicit) {
                    AcknowledgeType ack = ackFor(record);
                    if (ack != null) {
                        consumer.acknowledge(record, ack);
                        acksMade.incrementAndGet();
                    }
                    line.put("ack", ack == null ? null : ack.name());
                } else {
                    acksMade.incrementAndGet();
                }
                emit(line);
                total.incrementAndGet();
                delivered.incrementAndGet();
                String value = String.valueOf(string(record.value()));
                values.add(value);
                ShareStop current = stop;
                if (current != null) {
                    current.delivered(value);
                }
                got++;
            }
            if (got > 0 && commit) {
                Map<TopicIdPartition, Optional<KafkaException>> result = consumer.commitSync(WAIT);
                List<TopicIdPartition> partitions = new ArrayList<>(result.keySet());
                partitions.sort(Comparator.comparing(TopicIdPartition::topic)
                    .thenComparingInt(TopicIdPartition::partition));
                for (TopicIdPartition tip : partitions) {
                    Map<String, Object> line = obj("step", "share-commit", "name", label,
                                                   "topic", tip.topic(), "partition", tip.partition());
                    Optional<KafkaException> error = result.get(tip);
                    if (error.isPresent()) {
                        emitError(line, error.get());
                    } else {
                        line.put("error", null);
                        emit(line);
                    }
                }
            }
            return got;
        }

        private AcknowledgeType ackFor(ConsumerRecord<byte[], byte[]> record) {
            String offset = Long.toString(record.offset());
            String partitioned = record.partition() + "/" + offset;
            String delivery = "@" + record.deliveryCount().map(String::valueOf).orElse("?");
            for (String key : List.of(partitioned + delivery, offset + delivery, partitioned, offset)) {
                if (acks.containsKey(key)) {
                    return acks.get(key);
                }
            }
            return defaultAck;
        }
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
        ConfigResource resource = new ConfigResource(ConfigResource.Type.TOPIC, topic);
        describeConfigEntries(obj("step", "describe-configs", "topic", topic), resource, keys);
    }

    /**
     * describe-group-config group=G [keys=a,b]: describeConfigs of the group's configs
     * (ConfigResource.Type.GROUP), each entry as describe-configs prints it.
     */
    private void describeGroupConfig(Step step) throws Exception {
        String group = step.required("group");
        String keys = step.get("keys", null);
        ConfigResource resource = new ConfigResource(ConfigResource.Type.GROUP, group);
        describeConfigEntries(obj("step", "describe-group-config", "group", group), resource, keys);
    }

    private void describeConfigEntries(Map<String, Object> line, ConfigResource resource,
                                       String keys) throws Exception {
        List<String> only = keys == null ? null : List.of(keys.split(","));
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

    /**
     * group-config group=G [delete=K1,K2] [validate-only=false] [KEY=VALUE ...]:
     * incrementalAlterConfigs on the group's configs (ConfigResource.Type.GROUP), a SET for each
     * KEY=VALUE (every argument but group, delete and validate-only) and a DELETE for each key
     * named in delete. Prints the configs asked for and the result (or the error).
     */
    private void groupConfig(Step step) throws Exception {
        String group = step.required("group");
        String delete = step.get("delete", null);
        boolean validateOnly = step.bool("validate-only", false);
        Map<String, String> set = step.rest();
        List<AlterConfigOp> ops = new ArrayList<>();
        for (Map.Entry<String, String> entry : set.entrySet()) {
            ops.add(new AlterConfigOp(new ConfigEntry(entry.getKey(), entry.getValue()),
                                      AlterConfigOp.OpType.SET));
        }
        List<String> deleted = delete == null ? List.of() : List.of(delete.split(","));
        for (String key : deleted) {
            ops.add(new AlterConfigOp(new ConfigEntry(key, null), AlterConfigOp.OpType.DELETE));
        }
        ConfigResource resource = new ConfigResource(ConfigResource.Type.GROUP, group);
        Map<String, Object> line = obj("step", "group-config", "group", group, "set", set,
                                       "delete", deleted);
        try {
            admin().incrementalAlterConfigs(Map.of(resource, ops),
                                            new AlterConfigsOptions().validateOnly(validateOnly))
                .all().get(WAIT.toMillis(), TimeUnit.MILLISECONDS);
            line.put("error", null);
            emit(line);
        } catch (ExecutionException e) {
            emitError(line, e);
        }
    }

    /**
     * describe-share-group group=G: describeShareGroups' state, group epoch, target assignment
     * epoch, coordinator and members (id, client id, host, member epoch, assigned partitions),
     * members in the order of their client ids.
     */
    private void describeShareGroup(Step step) throws Exception {
        String group = step.required("group");
        Map<String, Object> line = obj("step", "describe-share-group", "group", group);
        try {
            ShareGroupDescription description = admin().describeShareGroups(List.of(group))
                .describedGroups().get(group).get(WAIT.toMillis(), TimeUnit.MILLISECONDS);
            List<ShareMemberDescription> sortedMembers = new ArrayList<>(description.members());
            sortedMembers.sort(Comparator.comparing(ShareMemberDescription::clientId)
                .thenComparing(ShareMemberDescription::consumerId));
            List<Object> members = new ArrayList<>();
            for (ShareMemberDescription member : sortedMembers) {
                members.add(obj("member_id", member.consumerId(), "client_id", member.clientId(),
                                "host", member.host(), "member_epoch", member.memberEpoch(),
                                "assignment", partitions(member.assignment().topicPartitions())));
            }
            line.put("error", null);
            line.put("state", description.groupState().toString());
            line.put("group_epoch", description.groupEpoch());
            line.put("assignment_epoch", description.targetAssignmentEpoch());
            Node coordinator = description.coordinator();
            line.put("coordinator", coordinator == null ? null : coordinator.id());
            line.put("members", members);
            emit(line);
        } catch (ExecutionException e) {
            emitError(line, e);
        }
    }

    /**
     * share-group-offsets group=G: listShareGroupOffsets, one entry per partition the group has
     * state for: its start offset (the first offset not yet acknowledged) and leader epoch.
     */
    private void shareGroupOffsets(Step step) throws Exception {
        String group = step.required("group");
        Map<String, Object> line = obj("step", "share-group-offsets", "group", group);
        try {
            Map<TopicPartition, OffsetAndMetadata> offsets = admin()
                .listShareGroupOffsets(Map.of(group, new ListShareGroupOffsetsSpec()))
                .partitionsToOffsetAndMetadata(group).get(WAIT.toMillis(), TimeUnit.MILLISECONDS);
            List<Object> entries = new ArrayList<>();
            for (TopicPartition tp : sorted(offsets.keySet())) {
                OffsetAndMetadata offset = offsets.get(tp);
                entries.add(obj("topic", tp.topic(), "partition", tp.partition(),
                                "offset", offset == null ? null : offset.offset(),
                                "leader_epoch", offset == null ? null : offset.leaderEpoch().orElse(null)));
            }
            line.put("error", null);
            line.put("offsets", entries);
            emit(line);
        } catch (ExecutionException e) {
            emitError(line, e);
        }
    }

    /**
     * alter-share-group-offsets group=G topic=T [partition=0] offset=O: alterShareGroupOffsets
     * for one partition (the share group must have no members).
     */
    private void alterShareGroupOffsets(Step step) throws Exception {
        String group = step.required("group");
        TopicPartition tp = new TopicPartition(step.required("topic"), step.integer("partition", 0));
        long offset = step.longValue("offset", 0);
        Map<String, Object> line = obj("step", "alter-share-group-offsets", "group", group,
                                       "partition", tp.partition(), "offset", offset);
        try {
            admin().alterShareGroupOffsets(group, Map.of(tp, offset)).all()
                .get(WAIT.toMillis(), TimeUnit.MILLISECONDS);
            line.put("error", null);
            emit(line);
        } catch (ExecutionException e) {
            emitError(line, e);
        }
    }

    /**
     * delete-share-group-offsets group=G topics=T1,T2: deleteShareGroupOffsets of whole topics
     * (the share group must have no members).
     */
    private void deleteShareGroupOffsets(Step step) throws Exception {
        String group = step.required("group");
        Set<String> topics = new TreeSet<>(List.of(step.required("topics").split(",")));
        Map<String, Object> line = obj("step", "delete-share-group-offsets", "group", group,
                                       "topics", new ArrayList<>(topics));
        try {
            admin().deleteShareGroupOffsets(group, topics).all()
                .get(WAIT.toMillis(), TimeUnit.MILLISECONDS);
            line.put("error", null);
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
        props.putAll(extra);
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
        for (String job : new ArrayList<>(shareJobs.keySet())) {
            try {
                joinShareJob(job);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
        for (ShareMember member : shareMembers.values()) {
            try {
                if (member.thread == null) {  // (one still polling after its join: left to exit)
                    member.consumer.close(WAIT);
                }
            } catch (RuntimeException e) {
                e.printStackTrace(System.err);
            }
        }
        shareMembers.clear();
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

    private static synchronized void emit(Map<String, Object> line) {
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

        /** Every argument no get has asked for yet (now used). */
        Map<String, String> rest() {
            Map<String, String> out = new LinkedHashMap<>();
            for (Map.Entry<String, String> entry : args.entrySet()) {
                if (!used.containsKey(entry.getKey())) {
                    used.put(entry.getKey(), true);
                    out.put(entry.getKey(), entry.getValue());
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
