// Command novacron-temporal is the single-process Temporal server NovaCron runs for local development and tests:
// frontend, history, matching and worker services in one process, SQLite persistence (in memory or in a file) and,
// optionally, the Temporal Web UI. It exists so that `npm start` and the test suite need nothing but Go at build time.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/uuid"
	uiserver "github.com/temporalio/ui-server/v2/server"
	uiconfig "github.com/temporalio/ui-server/v2/server/config"
	uiserveroptions "github.com/temporalio/ui-server/v2/server/server_options"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/server/common/cluster"
	"go.temporal.io/server/common/config"
	"go.temporal.io/server/common/dynamicconfig"
	tlog "go.temporal.io/server/common/log"
	"go.temporal.io/server/common/membership/static"
	sqliteplugin "go.temporal.io/server/common/persistence/sql/sqlplugin/sqlite"
	"go.temporal.io/server/common/primitives"
	sqliteschema "go.temporal.io/server/schema/sqlite"
	"go.temporal.io/server/temporal"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

const (
	clusterName   = "active"
	readyTimeout  = 90 * time.Second
	probeInterval = 100 * time.Millisecond
)

type options struct {
	ip            string
	port          int
	uiPort        int
	httpPort      int
	dbFilename    string
	namespaces    []string
	logLevel      string
	exitWithStdin bool
}

// namespaceList lets --namespace be given several times, which is how the CLI dev server spells it too.
type namespaceList []string

func (n *namespaceList) String() string { return strings.Join(*n, ",") }

func (n *namespaceList) Set(v string) error {
	for _, part := range strings.Split(v, ",") {
		if part = strings.TrimSpace(part); part != "" {
			*n = append(*n, part)
		}
	}
	return nil
}

func main() {
	opts, err := parseFlags(os.Args[1:])
	if err != nil {
		fail(err)
	}
	if err := run(opts); err != nil {
		fail(err)
	}
}

// fail prints a single line so the Node wrapper can surface it verbatim in its own error.
func fail(err error) {
	fmt.Fprintf(os.Stderr, "novacron-temporal: %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
	os.Exit(1)
}

func parseFlags(args []string) (*options, error) {
	fs := flag.NewFlagSet("novacron-temporal", flag.ContinueOnError)
	opts := &options{}
	var namespaces namespaceList
	fs.StringVar(&opts.ip, "ip", "127.0.0.1", "IP address every listener binds to")
	fs.IntVar(&opts.port, "port", 7233, "frontend gRPC port")
	fs.IntVar(&opts.uiPort, "ui-port", 8233, "Web UI port; 0 disables the UI")
	fs.IntVar(&opts.httpPort, "http-port", 0, "frontend HTTP API port; 0 picks a free one")
	fs.StringVar(&opts.dbFilename, "db-filename", "", "SQLite file to persist to; empty keeps everything in memory")
	fs.Var(&namespaces, "namespace", "namespace to register on start (repeatable); \"default\" is always registered")
	fs.StringVar(&opts.logLevel, "log-level", "warn", "server log level: debug, info, warn, error")
	fs.BoolVar(&opts.exitWithStdin, "exit-with-stdin", false,
		"shut down when stdin reaches EOF, so a crashed parent process cannot leave the server behind")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	// The server needs a literal IP for its membership addresses; "localhost" would silently resolve differently.
	if opts.ip == "localhost" {
		opts.ip = "127.0.0.1"
	}
	if net.ParseIP(opts.ip) == nil {
		return nil, fmt.Errorf("--ip must be an IP address, got %q", opts.ip)
	}
	if opts.port < 1 || opts.port > 65535 {
		return nil, fmt.Errorf("--port must be between 1 and 65535, got %d", opts.port)
	}
	if opts.uiPort < 0 || opts.uiPort > 65535 {
		return nil, fmt.Errorf("--ui-port must be between 0 and 65535, got %d", opts.uiPort)
	}
	if opts.httpPort < 0 || opts.httpPort > 65535 {
		return nil, fmt.Errorf("--http-port must be between 0 and 65535, got %d", opts.httpPort)
	}
	switch opts.logLevel {
	case "debug", "info", "warn", "error":
	default:
		return nil, fmt.Errorf("--log-level must be one of debug, info, warn, error, got %q", opts.logLevel)
	}
	seen := map[string]bool{"default": true}
	opts.namespaces = []string{"default"}
	for _, ns := range namespaces {
		if len(ns) > 255 || strings.ContainsAny(ns, " \t/\\") {
			return nil, fmt.Errorf("invalid namespace name %q", ns)
		}
		if !seen[ns] {
			seen[ns] = true
			opts.namespaces = append(opts.namespaces, ns)
		}
	}
	return opts, nil
}

func run(opts *options) error {
	// Explicit ports are checked up front: the UI server exits the process from a goroutine when it cannot bind,
	// and the Temporal frontend reports a bind failure only after a long retry loop.
	if err := checkPortFree(opts.ip, opts.port); err != nil {
		return fmt.Errorf("gRPC port %d on %s is not available: %w", opts.port, opts.ip, err)
	}
	if opts.uiPort > 0 {
		if err := checkPortFree(opts.ip, opts.uiPort); err != nil {
			return fmt.Errorf("UI port %d on %s is not available: %w", opts.uiPort, opts.ip, err)
		}
	}
	if opts.httpPort > 0 {
		if err := checkPortFree(opts.ip, opts.httpPort); err != nil {
			return fmt.Errorf("HTTP port %d on %s is not available: %w", opts.httpPort, opts.ip, err)
		}
	} else {
		// Nexus completion callbacks are delivered through the frontend HTTP API, so it stays on, just out of the way.
		port, err := freePort(opts.ip)
		if err != nil {
			return err
		}
		opts.httpPort = port
	}

	level := zap.NewAtomicLevelAt(parseLevel(opts.logLevel))
	logger := tlog.NewZapLogger(buildZapLogger(level))

	sqlConf, err := prepareDatabase(opts)
	if err != nil {
		return err
	}
	conf, hosts, err := buildServerConfig(opts, sqlConf)
	if err != nil {
		return err
	}
	server, err := temporal.NewServer(
		temporal.WithConfig(conf),
		temporal.ForServices(temporal.DefaultServices),
		temporal.WithStaticHosts(hosts),
		temporal.WithLogger(logger),
		temporal.WithDynamicConfigClient(dynamicConfig()),
	)
	if err != nil {
		return fmt.Errorf("failed creating server: %w", err)
	}
	if err := server.Start(); err != nil {
		return fmt.Errorf("failed starting server: %w", err)
	}

	var ui *uiserver.Server
	if opts.uiPort > 0 {
		ui = uiserver.NewServer(uiserveroptions.WithConfigProvider(&uiconfig.Config{
			Host:                opts.ip,
			Port:                opts.uiPort,
			TemporalGRPCAddress: hostPort(opts.ip, opts.port),
			EnableUI:            true,
			CORS:                uiconfig.CORS{CookieInsecure: true},
			HideLogs:            true,
			// The machine may have no internet access, and the news feed is noise for a local dev server.
			DisableNewsFetch: true,
		}))
		go func() {
			if err := ui.Start(); err != nil {
				logger.Error("UI server stopped: " + err.Error())
			}
		}()
	}

	var stopOnce sync.Once
	shutdown := func() {
		stopOnce.Do(func() {
			// Services log routine warnings while tearing down (lost shard ownership, closed pollers); only real errors
			// are worth showing at that point.
			if level.Level() < zapcore.ErrorLevel {
				level.SetLevel(zapcore.ErrorLevel)
			}
			if ui != nil {
				ui.Stop()
			}
			server.Stop()
		})
	}

	stop := make(chan os.Signal, 2)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	stdinClosed := make(chan struct{})
	if opts.exitWithStdin {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			close(stdinClosed)
		}()
	}

	readyCtx, cancelReady := context.WithTimeout(context.Background(), readyTimeout)
	readyErr := make(chan error, 1)
	go func() { readyErr <- waitReady(readyCtx, opts) }()
	select {
	case err := <-readyErr:
		cancelReady()
		if err != nil {
			shutdown()
			return err
		}
	case <-stop:
		cancelReady()
		shutdown()
		return nil
	case <-stdinClosed:
		cancelReady()
		shutdown()
		return nil
	}

	uiURL := "off"
	if opts.uiPort > 0 {
		uiURL = "http://" + hostPort(opts.ip, opts.uiPort)
	}
	fmt.Printf("novacron-temporal ready grpc=%s ui=%s http=%s\n",
		hostPort(opts.ip, opts.port), uiURL, hostPort(opts.ip, opts.httpPort))

	select {
	case <-stop:
	case <-stdinClosed:
	}
	go func() {
		// A second signal means the caller is done waiting for a graceful stop.
		<-stop
		os.Exit(130)
	}()
	shutdown()
	return nil
}

func parseLevel(s string) zapcore.Level {
	l, err := zapcore.ParseLevel(s)
	if err != nil {
		return zapcore.WarnLevel
	}
	return l
}

// buildZapLogger writes JSON lines to stderr, keeping stdout free for the ready line the wrapper waits for.
func buildZapLogger(level zap.AtomicLevel) *zap.Logger {
	encoderConf := zap.NewProductionEncoderConfig()
	encoderConf.TimeKey = "ts"
	encoderConf.EncodeTime = zapcore.ISO8601TimeEncoder
	core := zapcore.NewCore(zapcore.NewJSONEncoder(encoderConf), zapcore.Lock(os.Stderr), level)
	return zap.New(core, zap.AddCaller(), zap.AddCallerSkip(1))
}

// prepareDatabase returns the SQLite config and makes sure the schema and the requested namespaces exist.
func prepareDatabase(opts *options) (*config.SQL, error) {
	var conf config.SQL
	conf.PluginName = sqliteplugin.PluginName
	if opts.dbFilename == "" {
		// The plugin creates the schema itself for shared-cache in-memory databases; the name only has to be unique
		// within this process.
		conf.DatabaseName = "novacron-" + randomHex(8)
		conf.ConnectAttributes = map[string]string{"mode": "memory", "cache": "shared"}
	} else {
		path, err := filepath.Abs(opts.dbFilename)
		if err != nil {
			return nil, fmt.Errorf("invalid --db-filename: %w", err)
		}
		if err := ensureSchemaFile(path); err != nil {
			return nil, err
		}
		conf.DatabaseName = path
		conf.ConnectAttributes = map[string]string{"mode": "rwc"}
	}

	namespaces := make([]*sqliteschema.NamespaceConfig, 0, len(opts.namespaces))
	for _, name := range opts.namespaces {
		ns, err := sqliteschema.NewNamespaceConfig(clusterName, name, false, nil)
		if err != nil {
			return nil, fmt.Errorf("failed preparing namespace %q: %w", name, err)
		}
		namespaces = append(namespaces, ns)
	}
	// Existing namespaces are left untouched, so this is safe on every start of a persistent database.
	if err := sqliteschema.CreateNamespaces(&conf, namespaces...); err != nil {
		return nil, fmt.Errorf("failed registering namespaces: %w", err)
	}
	return &conf, nil
}

// ensureSchemaFile creates the database with its full schema under a temporary name and renames it into place, so an
// interrupted first start never leaves a half-initialised file that later starts would mistake for a usable one.
func ensureSchemaFile(path string) error {
	if info, err := os.Stat(path); err == nil {
		if info.IsDir() {
			return fmt.Errorf("--db-filename %s is a directory", path)
		}
		if info.Size() > 0 {
			return nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("cannot access database file %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("cannot create directory for database file: %w", err)
	}
	tmp := fmt.Sprintf("%s.init-%d-%s", path, os.Getpid(), randomHex(4))
	conf := config.SQL{
		PluginName:        sqliteplugin.PluginName,
		DatabaseName:      tmp,
		ConnectAttributes: map[string]string{"mode": "rwc"},
	}
	if err := sqliteschema.SetupSchema(&conf); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("failed creating schema in %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("failed moving new database into place at %s: %w", path, err)
	}
	return nil
}

func buildServerConfig(opts *options, sqlConf *config.SQL) (*config.Config, map[primitives.ServiceName]static.Hosts, error) {
	frontend := hostPort(opts.ip, opts.port)
	conf := &config.Config{}
	conf.Global.Membership.MaxJoinDuration = 30 * time.Second
	conf.Global.Membership.BroadcastAddress = opts.ip

	conf.Persistence.DefaultStore = "sqlite"
	conf.Persistence.VisibilityStore = "sqlite"
	conf.Persistence.NumHistoryShards = 1
	conf.Persistence.DataStores = map[string]config.DataStore{"sqlite": {SQL: sqlConf}}

	conf.ClusterMetadata = &cluster.Config{
		EnableGlobalNamespace:    false,
		FailoverVersionIncrement: 10,
		MasterClusterName:        clusterName,
		CurrentClusterName:       clusterName,
		ClusterInformation: map[string]cluster.ClusterInformation{
			clusterName: {
				Enabled:                true,
				InitialFailoverVersion: 1,
				RPCAddress:             frontend,
				HTTPAddress:            hostPort(opts.ip, opts.httpPort),
				// Only used when the database is first initialised; later starts keep the stored ID.
				ClusterID: uuid.NewString(),
			},
		},
	}
	conf.DCRedirectionPolicy.Policy = "noop"
	conf.Archival.History.State = "disabled"
	conf.Archival.Visibility.State = "disabled"
	conf.NamespaceDefaults.Archival.History.State = "disabled"
	conf.NamespaceDefaults.Archival.Visibility.State = "disabled"
	conf.PublicClient.HostPort = frontend

	// Static hosts replace ringpop, so no membership ports are opened. The internal services still need gRPC ports of
	// their own; they are picked free on every start so several dev servers can share one machine.
	conf.Services = map[string]config.Service{}
	hosts := map[primitives.ServiceName]static.Hosts{}
	for _, name := range temporal.DefaultServices {
		var svc config.Service
		svc.RPC.BindOnIP = opts.ip
		if name == string(primitives.FrontendService) {
			svc.RPC.GRPCPort = opts.port
			svc.RPC.HTTPPort = opts.httpPort
		} else {
			port, err := freePort(opts.ip)
			if err != nil {
				return nil, nil, err
			}
			svc.RPC.GRPCPort = port
		}
		conf.Services[name] = svc
		hosts[primitives.ServiceName(name)] = static.SingleLocalHost(hostPort(opts.ip, svc.RPC.GRPCPort))
	}
	return conf, hosts, nil
}

func dynamicConfig() dynamicconfig.StaticClient {
	dc := dynamicconfig.StaticClient{}
	set := func(key dynamicconfig.Key, value any) { dc[key] = value }
	// New search attributes become visible immediately instead of after a cache refresh, which is what tests that
	// create and use them in one go expect.
	set(dynamicconfig.ForceSearchAttributesCacheRefreshOnRead.Key(), true)
	// Bypassing that cache costs persistence reads, so the rate limits get matching headroom.
	set(dynamicconfig.FrontendPersistenceMaxQPS.Key(), 10000)
	set(dynamicconfig.HistoryPersistenceMaxQPS.Key(), 45000)
	set(dynamicconfig.FrontendMaxNamespaceVisibilityRPSPerInstance.Key(), 100)
	set(dynamicconfig.HistoryCacheHostLevelMaxSize.Key(), 8096)
	// NovaCron's operation workflows are driven by updates; pinned on so a server default flip cannot break them.
	set(dynamicconfig.FrontendEnableUpdateWorkflowExecution.Key(), true)
	set(dynamicconfig.FrontendEnableUpdateWorkflowExecutionAsyncAccepted.Key(), true)
	return dc
}

// waitReady returns once every namespace is served by the frontend and the UI answers, so that the ready line
// means callers can use the server immediately.
func waitReady(ctx context.Context, opts *options) error {
	conn, err := grpc.NewClient(hostPort(opts.ip, opts.port), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("failed creating readiness client: %w", err)
	}
	defer func() { _ = conn.Close() }()
	client := workflowservice.NewWorkflowServiceClient(conn)
	for _, ns := range opts.namespaces {
		var lastErr error
		for {
			callCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, lastErr = client.DescribeNamespace(callCtx, &workflowservice.DescribeNamespaceRequest{Namespace: ns})
			cancel()
			if lastErr == nil {
				break
			}
			if err := sleep(ctx); err != nil {
				return fmt.Errorf("server did not become ready within %s: namespace %q: %w", readyTimeout, ns, lastErr)
			}
		}
	}
	if opts.uiPort == 0 {
		return nil
	}
	url := "http://" + hostPort(opts.ip, opts.uiPort) + "/healthz"
	httpClient := &http.Client{Timeout: 2 * time.Second}
	for {
		resp, err := httpClient.Get(url)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		if sleepErr := sleep(ctx); sleepErr != nil {
			return fmt.Errorf("UI did not become ready within %s: %w", readyTimeout, err)
		}
	}
}

func sleep(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(probeInterval):
		return nil
	}
}

func checkPortFree(ip string, port int) error {
	l, err := net.Listen("tcp", hostPort(ip, port))
	if err != nil {
		return err
	}
	return l.Close()
}

// freePort asks the kernel for an unused port. On Linux a just-closed ephemeral port can be handed out again right
// away, which would let two servers starting side by side collide; leaving one end of a loopback connection in
// TIME_WAIT keeps the kernel from re-assigning it for a while, while we can still bind it explicitly.
func freePort(ip string) (int, error) {
	l, err := net.Listen("tcp", hostPort(ip, 0))
	if err != nil {
		return 0, fmt.Errorf("failed to find a free port on %s: %w", ip, err)
	}
	defer func() { _ = l.Close() }()
	port := l.Addr().(*net.TCPAddr).Port
	if runtime.GOOS == "darwin" || runtime.GOOS == "windows" {
		// These allocate ephemeral ports sequentially, so reuse is not a concern and the extra socket is waste.
		return port, nil
	}
	client, err := net.Dial("tcp", hostPort(ip, port))
	if err != nil {
		return 0, fmt.Errorf("failed to reserve port %d: %w", port, err)
	}
	defer func() { _ = client.Close() }()
	accepted, err := l.Accept()
	if err != nil {
		return 0, fmt.Errorf("failed to reserve port %d: %w", port, err)
	}
	// The side that closes first enters TIME_WAIT; it must be the listening side for the reservation to work.
	_ = accepted.Close()
	return port, nil
}

func hostPort(ip string, port int) string {
	return net.JoinHostPort(ip, strconv.Itoa(port))
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
