package controllers

import (
	"flag"
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
