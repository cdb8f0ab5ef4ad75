package controllers

import (
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Leader election is on by default in a cluster: two operators without it fight over every
// simulation (issue 9, bug 4). Outside a cluster (make run, tests) it stays off.
func TestLeaderElectionDefaultsOnInCluster(t *testing.T) {
	saved := runningInCluster
	t.Cleanup(func() { runningInCluster = saved })
	for _, tc := range []struct {
		inCluster bool
		args      []string
		want      bool
	}{
		{true, nil, true},
		{false, nil, false},
		{true, []string{"--leader-elect=false"}, false},
		{false, []string{"--leader-elect"}, true},
	} {
		runningInCluster = func() bool { return tc.inCluster }
		var c Config
		fs := flag.NewFlagSet("operator", flag.ContinueOnError)
		c.Register(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		if c.LeaderElect != tc.want {
			t.Errorf("in cluster %v, args %v: leader election %v, want %v", tc.inCluster, tc.args, c.LeaderElect, tc.want)
		}
	}
}

// Issue 9: /metrics is secure by default; a --metrics-cert-dir without the certificate fails at
// start instead of falling back to a self-signed one; --watch-namespace takes a list.
func TestMetricsAndNamespaceFlags(t *testing.T) {
	certDir := t.TempDir()
	for _, f := range []string{"tls.crt", "tls.key"} {
		if err := os.WriteFile(filepath.Join(certDir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		args    []string
		wantErr string // "" = valid
		check   func(Config) bool
	}{
		{nil, "", func(c Config) bool { return c.MetricsSecure && c.MetricsAddr == ":8443" && c.MetricsCertDir == "" }},
		{[]string{"--metrics-secure=false", "--metrics-bind-address=:8080"}, "", func(c Config) bool { return !c.MetricsSecure }},
		{[]string{"--metrics-cert-dir=" + certDir}, "", nil},
		{[]string{"--metrics-cert-dir=" + t.TempDir()}, "metrics-cert-dir", nil},
		{[]string{"--metrics-secure=false", "--metrics-cert-dir=" + certDir}, "metrics-cert-dir", nil},
		{[]string{"--watch-namespace=a, b,a"}, "", func(c Config) bool {
			ns, err := watchNamespaces(c.WatchNamespace)
			return err == nil && slices.Equal(ns, []string{"a", "b"})
		}},
		{[]string{"--watch-namespace=a,B_x"}, "watch-namespace", nil},
	} {
		var c Config
		fs := flag.NewFlagSet("operator", flag.ContinueOnError)
		c.Register(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		err := c.Validate()
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%v: %v", tc.args, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%v: error %v, want one naming %s", tc.args, err, tc.wantErr)
		case tc.check != nil && !tc.check(c):
			t.Errorf("%v: unexpected config %+v", tc.args, c)
		}
	}
	// The metrics server options follow the flags.
	if o := metricsOptions(Config{MetricsAddr: ":8443", MetricsSecure: true, MetricsCertDir: certDir}); !o.SecureServing || o.FilterProvider == nil || o.CertDir != certDir {
		t.Errorf("secure options %+v", o)
	}
	if o := metricsOptions(Config{MetricsAddr: ":8080"}); o.SecureServing || o.FilterProvider != nil {
		t.Errorf("plain options %+v", o)
	}
}
